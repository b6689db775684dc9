"""The driver against a real Optuna study, MLflow store, space and predictor, with a stand-in for the Ray
workers: nothing trains, so no Ray."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable

import numpy as np
import optuna

import spaces
from search import latency
from search import study as driver
from search.config import compose, resolve
from search.study_config import StudyConfig
from search.tracking import Tracker
from search.workers import TrialFailed


class FakeWorkers:
    """Ray's part of `Workers` on a simulated clock: records submissions; a trial submitted at time t finishes at
    t + duration(number), and `wait` hands back the first to finish among the refs it is given (ties: the one
    submitted first). A trial's accuracy is 90 + its number (its seed, at seed 0), so a copied result shows whose
    it is."""

    def __init__(self, slots: int, fail: set[int] = frozenset(), duration: Callable[[int], float] = lambda n: 1.0):
        self.slots, self.fail, self.duration = slots, fail, duration
        self.submitted: list[int] = []  # trial numbers
        self.refs = itertools.count()
        self.clock = 0.0

    def submit(self, fn, space_settings, candidate, data, supernet, finetune, seed):
        self.submitted.append(seed)
        return (self.clock + self.duration(seed), next(self.refs), seed)

    def wait(self, refs, timeout=None):
        """The first to finish; with timeout=0, only one finished by now."""
        first = min(refs, default=None)
        if first is None or (timeout == 0 and first[0] > self.clock):
            return []
        self.clock = max(self.clock, first[0])
        return [first]

    def result(self, ref):
        number = ref[2]
        if number in self.fail:
            raise TrialFailed("RuntimeError: out of memory")
        return ({"accuracy": 90.0 + number, "test_accuracy": 89.0 + number, "evaluate_s": 0.1},
                {"w": np.full(3, number, dtype=np.float32)}), "node-1"

    def cancel(self, refs):
        pass


def config(tmp_path: Path, n_trials: int, *overrides: str) -> dict:
    return resolve(compose(["data=digits", f"study.dir={tmp_path}/study", f"cache_dir={tmp_path}/cache",
                            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"n_trials={n_trials}",
                            "pareto.every=100", *overrides]))


def digits_space(cfg: dict, **settings):
    return spaces.create(**{**cfg["space"], **settings}, input_shape=(1, 8, 8), num_classes=10)


def make_driver(cfg: dict, workers: FakeWorkers, sampler: optuna.samplers.BaseSampler | None = None):
    """The driver `study.run` makes (a resumed study too), on fake workers."""
    space = digits_space(cfg)
    study = driver._open(StudyConfig.of(cfg), space)
    if sampler is not None:
        study.sampler = sampler
    tracker = Tracker(cfg["tracking"]["uri"], cfg["study"]["name"])
    tracker.start_study(cfg, [], "", {})
    complete = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    return driver.Driver(StudyConfig.of(cfg), study, tracker, workers, space, latency.for_target(cfg["target"]), {},
                         driver.Inputs({}, None, None, {}), complete=complete)


def runs(cfg: dict) -> dict[int, object]:
    return Tracker(cfg["tracking"]["uri"], cfg["study"]["name"], create=False).trial_runs()
