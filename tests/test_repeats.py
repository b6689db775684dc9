"""No network is evaluated twice: a candidate's identity is the network it builds, and the driver tells a
trial of a network already evaluated (or being evaluated) that result instead of training it again. The
driver runs here against a real Optuna study, MLflow store, space and predictor, with a stand-in for the
Ray workers that records what was submitted and answers at once: nothing trains, so no Ray."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from mlflow import MlflowClient

import spaces
from search import latency, pareto
from search import study as driver
from search.config import compose, resolve
from search.tracking import Tracker
from search.workers import TrialFailed
from spaces.candidate import identity

optuna.logging.set_verbosity(optuna.logging.WARNING)


class FakeWorkers:
    """Ray's part of `Workers`: records submissions; `wait` hands back the oldest running trial (or the newest,
    `lifo`); a trial's accuracy is 90 + its number (its seed, at seed 0), so a copied result shows whose it is."""

    def __init__(self, slots: int, lifo: bool = False, fail: set[int] = frozenset()):
        self.slots, self.lifo, self.fail = slots, lifo, fail
        self.submitted: list[int] = []  # trial numbers
        self.refs = itertools.count()

    def submit(self, fn, space_settings, candidate, data, supernet, finetune, seed):
        self.submitted.append(seed)
        return (next(self.refs), seed)

    def wait(self, refs):
        return [max(refs) if self.lifo else min(refs)] if refs else []

    def result(self, ref):
        number = ref[1]
        if number in self.fail:
            raise TrialFailed("RuntimeError: out of memory")
        return ({"accuracy": 90.0 + number, "test_accuracy": 89.0 + number, "evaluate_s": 0.1},
                {"w": np.full(3, number, dtype=np.float32)}), "node-1"

    def cancel(self, refs):
        pass


def config(tmp_path: Path, n_trials: int) -> dict:
    return resolve(compose(["data=digits", f"study.dir={tmp_path}/study", f"cache_dir={tmp_path}/cache",
                            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"n_trials={n_trials}",
                            "pareto.every=100"]))


def digits_space(cfg: dict, **settings):
    return spaces.create(**{**cfg["space"], **settings}, input_shape=(1, 8, 8), num_classes=10)


def make_driver(cfg: dict, workers: FakeWorkers, sampler: optuna.samplers.BaseSampler | None = None):
    """The driver `study.run` makes (a resumed study too), on fake workers."""
    space = digits_space(cfg)
    study = driver._open(cfg, space)
    if sampler is not None:
        study.sampler = sampler
    tracker = Tracker(cfg["tracking"]["uri"], cfg["study"]["name"])
    tracker.start_study(cfg, [], "", {})
    complete = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    return driver.Driver(driver.Settings.of(cfg), study, tracker, workers, space, latency.for_target(cfg["target"]), {},
                         driver.Inputs({}, None, None, {}), complete=complete)


def runs(cfg: dict) -> dict[int, object]:
    return Tracker(cfg["tracking"]["uri"], cfg["study"]["name"], create=False).trial_runs()


# --- identity -----------------------------------------------------------------------------------------


def test_choices_that_build_the_same_network_are_the_same_network(tmp_path):
    """Widths 0.2 and 0.25 both round the 16-channel stem to 4 channels; sparsity 0.1 of a 16-channel expansion
    rounds back to 16 channels (no effect). Their networks are identical, weights included; other choices differ."""
    space = digits_space(config(tmp_path, 2), widths=[0.2, 0.25, 1.0], sparsity=[0.0, 0.1])
    base = space.baselines()["float"] | {"width.stem": 0.25, "width.s0": 0.25}
    a = spaces.Candidate.of(space.name, base)
    b = spaces.Candidate.of(space.name, base | {"width.stem": 0.2, "sparsity.b1.expand": 0.1})
    assert a != b and identity(space, a) == identity(space, b) and hash(identity(space, a)) == hash(identity(space, b))
    torch.manual_seed(0)
    supernet = space.supernet()
    built = space.subnet(supernet, a).state_dict(), space.subnet(supernet, b).state_dict()
    assert built[0].keys() == built[1].keys() and all(torch.equal(built[0][k], built[1][k]) for k in built[0])

    others = [base | {"width.stem": 1.0}, base | {"bits.head": 8}, base | {"sparsity.b1.expand": 0.1, "width.s0": 1.0}]
    keys = {identity(space, spaces.Candidate.of(space.name, p)) for p in [base, *others]}
    assert len(keys) == 4
    float_, int8 = (identity(space, spaces.Candidate.of(space.name, p)) for p in space.baselines().values())
    assert float_ != int8  # the baselines enqueued at study start are never repeats of each other
    plain = (str, int, float)
    assert all(isinstance(v, plain) or all(isinstance(x, plain) or all(isinstance(y, plain) for y in x) for x in v)
               for v in identity(space, a))


# --- the driver ---------------------------------------------------------------------------------------


def test_a_repeat_of_a_complete_trial_is_told_its_result_and_not_trained(tmp_path, capsys):
    """A sampler that proposes only the float network after the baselines: every further trial is a repeat of
    trial 0 (same values, metrics, weights; repeat_of), costs no Ray slot, and the study still ends at n_trials."""
    cfg = config(tmp_path, 5)
    float_params = digits_space(cfg).baselines()["float"]
    workers = FakeWorkers(slots=1)
    d = make_driver(cfg, workers, optuna.samplers.PartialFixedSampler(float_params, optuna.samplers.RandomSampler(0)))
    d.loop()
    assert workers.submitted == [0, 1] and d.complete == 5 and d.repeats == 3
    trials = d.study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 5
    for t in trials[2:]:
        assert t.user_attrs["repeat_of"] == 0 and t.values == trials[0].values and t.params == trials[0].params
        assert {k: v for k, v in t.user_attrs.items() if k != "repeat_of"} == \
            {k: v for k, v in trials[0].user_attrs.items() if k != "baseline"}
    assert trials[0].user_attrs["accuracy"] == 90.0 and "repeat_of" not in trials[0].user_attrs

    by_number, client = runs(cfg), MlflowClient(cfg["tracking"]["uri"])
    for n in (2, 3, 4):
        run = by_number[n]
        assert run.info.status == "FINISHED" and run.data.tags["repeat_of"] == "0"
        assert run.data.metrics == by_number[0].data.metrics  # repeat_of is a tag, not a metric
        assert "weights.npz" in {f.path for f in client.list_artifacts(run.info.run_id)}
    assert "repeat_of" not in by_number[0].data.tags

    pts = pareto.points(trials, cfg["objectives"])
    assert [p.trial for p in pts] == [0, 1]  # the front holds the original only
    assert "repeats=3" in capsys.readouterr().err  # the progress bar
    driver._summary(pts, driver.Settings.of(cfg), "1", d.complete, d.repeats)
    assert "5 complete trials (3 repeats" in capsys.readouterr().out


@pytest.mark.parametrize("fails", [False, True])
def test_a_repeat_of_a_running_trial_waits_for_its_result(tmp_path, fails):
    """Trial 2 proposes the float network while trial 0 still trains it: it takes no slot, and gets trial 0's
    result when that arrives; if trial 0 fails, it fails with it (the sampler may propose the network again)."""
    cfg = config(tmp_path, 3)
    space = digits_space(cfg)
    workers = FakeWorkers(slots=2, lifo=True, fail={0} if fails else set())
    d = make_driver(cfg, workers)
    d.study.enqueue_trial(space.baselines()["float"])
    d.loop()
    trials = d.study.trials
    State = optuna.trial.TrialState
    if not fails:
        assert workers.submitted == [0, 1] and d.repeats == 1 and d.failed == 0
        assert trials[2].state == State.COMPLETE and trials[2].user_attrs["repeat_of"] == 0
        assert trials[2].values == trials[0].values == [90.0, trials[0].user_attrs["latency_ms"]]
        with np.load(MlflowClient(cfg["tracking"]["uri"]).download_artifacts(
                runs(cfg)[2].info.run_id, "weights.npz", str(tmp_path))) as npz:
            assert npz["w"].tolist() == [0.0, 0.0, 0.0]  # trial 0's weights
    else:
        assert workers.submitted[:2] == [0, 1] and 2 not in workers.submitted and d.failed == 2
        assert [trials[0].state, trials[2].state] == [State.FAIL, State.FAIL]
        error = runs(cfg)[2].data.tags["error"]
        assert error.startswith("repeat of trial 0, which failed: RuntimeError")
        assert d.complete == 3 and d.repeats == 0  # the study went on with other networks


def test_a_resumed_study_knows_the_networks_of_its_earlier_runs(tmp_path):
    cfg = config(tmp_path, 2)
    first = FakeWorkers(slots=2)
    make_driver(cfg, first).loop()
    assert first.submitted == [0, 1]

    cfg = config(tmp_path, 3)  # resumed: a new driver, a study loaded from the journal, a new Tracker
    again = FakeWorkers(slots=2)
    d = make_driver(cfg, again)
    assert len(d.evaluated) == 2 and d.complete == 2
    d.study.enqueue_trial(digits_space(cfg).baselines()["int8"])
    d.loop()
    assert again.submitted == [] and d.repeats == 1
    t = d.study.trials[2]
    assert t.user_attrs["repeat_of"] == 1 and t.values == d.study.trials[1].values
    stored = MlflowClient(cfg["tracking"]["uri"]).list_artifacts(runs(cfg)[2].info.run_id)
    assert "weights.npz" in {f.path for f in stored}  # trial 1's, found through MLflow (an earlier driver's run)
    assert make_driver(cfg, FakeWorkers(slots=2)).repeats == 1  # counted again on the next resume
