"""The driver: the one place that talks to Optuna and MLflow. It asks Optuna for trials, turns
them into candidates, predicts their latency, sends their evaluation to Ray workers, and tells
Optuna and MLflow what came back."""
from __future__ import annotations

import os
import signal
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import optuna
import yaml
from hydra.utils import instantiate
from optuna.trial import TrialState
from tqdm import tqdm

import spaces
from spaces.candidate import identity

from . import domain, front, latency, locks, objectives, preflight, storage, supernet
from .config import ConfigError
from .errors import UserError
from .evaluate import evaluate
from .pareto import REPEAT_OF
from .study_config import StudyConfig
from .tracking import Tracker
from .workers import TrialFailed, Workers

# Optuna's INFO lines ("A new study created ...") go where the command's logging sends them (the run
# folder's log file; the console shows warnings), not to a console handler of Optuna's own.
optuna.logging.disable_default_handler()
optuna.logging.enable_propagation()


def run(ready: preflight.Ready, overrides: Sequence[str] = ()) -> optuna.Study:
    """Run (or resume) the study `preflight.study` checked until it holds n_trials complete trials."""
    config, data, space, predictor = ready.config, ready.data, ready.space, ready.predictor
    os.environ.setdefault("MPLCONFIGDIR", str(Path(config.cache_dir) / "matplotlib"))  # its font cache, not in HOME
    space_settings = config.space_settings(data.input_shape, data.num_classes)
    ray = config.ray
    with locks.driver(config.where.folder, config.name), Workers(
            ray.address, ray.num_cpus, ray.cpus_per_trial, ray.gpus_per_trial, ray.max_retries) as workers:
        data_ref = workers.share(data)
        key = config.supernet_key(ready.init)
        started = time.perf_counter()
        trained, cached = supernet.load_or_train(key, config.cache_dir, lambda: _train_supernet(
            workers, key, space_settings, data_ref, config, ready.init))
        print(f"supernet {key}: {'from cache' if cached else 'trained'} in {time.perf_counter() - started:.0f} s, "
              f"full-width validation accuracy {trained.val_accuracy:.2f}%", flush=True)

        study = _open(config, space)
        tracker = Tracker(config.tracking_uri, config.name)
        recovered = recover(study, tracker)
        if recovered:
            print(f"resumed: {recovered} trial(s) a stopped driver left running are marked FAIL (KILLED in MLflow)")
        tags = _target_tags(config, predictor)
        tracker.start_study(config.raw, list(overrides), yaml.safe_dump(dict(config.raw), sort_keys=False), tags)
        tracker.log_study({"supernet_val_accuracy": trained.val_accuracy}, {"supernet.key": key})
        driver = Driver(config, study, tracker, workers, space, predictor, tags,
                        Inputs(space_settings, data_ref, workers.share(trained), config.finetune),
                        complete=len(study.get_trials(states=(TrialState.COMPLETE,))))
        try:
            with _interruptible():
                driver.loop()
        except KeyboardInterrupt:
            driver.stop(overrides)
            raise
        pts = front.publish(study, tracker, config, driver.complete)
        outside = domain.extrapolated(study.trials)
        tracker.end_study({"complete_trials": driver.complete, "repeats": driver.repeats,
                           "extrapolated_trials": len(outside)})
    front.summary(pts, config, tracker.experiment_id, driver.complete, driver.repeats)
    domain.summary(outside, driver.complete, config.target["name"])
    return study


def _train_supernet(workers: Workers, key: str, space_settings: Mapping[str, Any], data_ref: Any,
                    config: StudyConfig, init: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train on one worker with the largest node's CPUs, with a progress bar (batches, epoch, ETA)."""
    with tqdm(desc=f"supernet {key}", unit="batch", dynamic_ncols=True) as bar:
        def report(p: supernet.Progress) -> None:
            bar.total = p.steps
            bar.set_postfix_str(f"epoch {p.epoch}/{p.epochs}" if p.stage == "training" else p.stage, refresh=False)
            bar.update(p.step - bar.n)

        return workers.stream(supernet.train, space_settings, data_ref, config.supernet, config.seed,
                              None if init is None else workers.share(init), report=report, cpus=workers.cpus)


def _open(config: StudyConfig, space: spaces.SearchSpace) -> optuna.Study:
    """Create or load the study; a new one starts with the baselines, a resumed one draws new points.
    Budgets reach the sampler as each trial's constraints (`Driver.start`), whatever the sampler."""
    directions = [objectives.DIRECTIONS[o] for o in config.objectives]
    study = optuna.create_study(study_name=config.name, storage=storage.for_study(config.where),
                                directions=directions, load_if_exists=True)
    if study.directions != [optuna.study.StudyDirection[d.upper()] for d in directions]:
        raise ConfigError(f"objectives: study {config.name!r} was created with other objectives; "
                          "use another study.name")
    if preflight.CONFIG_ATTR not in study.user_attrs:  # a new study, or one made before configs were recorded
        study.set_user_attr(preflight.CONFIG_ATTR, preflight.meaning(config.raw))
    if study.metric_names != list(config.objectives):
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what optuna-dashboard reads
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(config.objectives))
    sampler = dict(config.sampler)
    seed = (config.seed if config.search_seed is None else config.search_seed) + len(study.trials)
    if "base_sampler" in sampler:  # a wrapper (PartialFixedSampler): the sampler it wraps takes the seed
        study.sampler = instantiate({**sampler, "base_sampler": {**sampler["base_sampler"], "seed": seed}})
    else:  # study_config.validate admits only samplers that take a seed
        study.sampler = instantiate(sampler, seed=seed)
    if not study.trials:
        for name, params in space.baselines().items():
            study.enqueue_trial(params, user_attrs={"baseline": name})
    return study


def recover(study: optuna.Study, tracker: Tracker) -> int:
    """Make Optuna and MLflow agree after a driver died: trials it left RUNNING become FAIL (their
    runs KILLED); a trial Optuna has as COMPLETE whose run was never ended gets its values and ends.
    Safe only under `locks.driver`: no other driver is running trials. Returns the trials marked FAIL."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL)
    states = {t.number: t for t in study.get_trials(deepcopy=False)}
    for number, run in tracker.trial_runs().items():
        if run.info.status != "RUNNING":
            continue
        done = states.get(number)
        if done is not None and done.state == TrialState.COMPLETE:
            repeat = {REPEAT_OF: str(done.user_attrs[REPEAT_OF])} if REPEAT_OF in done.user_attrs else {}
            tracker.end_trial(run.info.run_id, "COMPLETE", _numbers(done.user_attrs), repeat)
        else:
            tracker.end_trial(run.info.run_id, "KILLED", {}, {"error": "the driver stopped while the trial ran"})
    return len(stale)


@contextmanager
def _interruptible() -> Iterator[None]:
    """SIGTERM (a scheduler pre-empting the driver) stops the study like Ctrl-C does. So does SIGINT even where
    the driver was started with it ignored (a background job of a non-interactive shell inherits SIG_IGN)."""
    def stop(signum, frame):
        raise KeyboardInterrupt
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@dataclass(frozen=True)
class Inputs:
    """What every trial's evaluation gets besides its candidate and seed; the large ones as Ray object refs,
    put in the object store once per study."""

    space: Mapping[str, Any]  # the space's settings: its config and the data's shape
    data: Any  # ref to the Dataset
    supernet: Any  # ref to the trained supernet's weights
    finetune: Mapping[str, Any]

    def submit(self, workers: Workers, candidate: spaces.Candidate, seed: int) -> Any:
        """Evaluate `candidate` on a worker as a trial with this fine-tuning seed is (`trial_seed`): a script that
        evaluates networks beside a study's trials does it here too. Returns the task's ref."""
        return workers.submit(evaluate, self.space, candidate, self.data, self.supernet, self.finetune, seed)


@dataclass
class Driver:
    """The running study: asks Optuna for trials while slots are free, sends them to Ray, and tells
    Optuna and MLflow how each one ended. No network is trained twice: a trial of a network the study
    has evaluated, or is evaluating, is told that result instead (`repeat`)."""

    config: StudyConfig
    study: optuna.Study
    tracker: Tracker
    workers: Workers
    space: spaces.SearchSpace
    predictor: latency.Predictor
    tags: dict[str, str]  # target and predictor tags every trial run carries
    inputs: Inputs
    complete: int
    failed: int = 0
    repeats: int = 0  # complete trials told another trial's result, this study's (a resumed one's too)
    running: dict = field(default_factory=dict)  # Ray ref -> (trial, predicted metrics, run id, network)
    waiting: dict = field(default_factory=dict)  # network being evaluated -> [(trial, predicted, run id)] repeating it
    evaluated: dict = field(default_factory=dict)  # network -> (number, values, metrics) of its first complete trial
    run_ids: dict = field(default_factory=dict)  # trial number -> MLflow run id, for the trials this driver started

    def __post_init__(self) -> None:
        """Index the complete trials by network, a resumed study's too: the identity is recomputed from the
        stored params (`FixedTrial`) by the code that runs now, so it holds for trials stored before it existed."""
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            self.repeats += REPEAT_OF in t.user_attrs
            network = identity(self.space, self.space.sample(optuna.trial.FixedTrial(t.params)))
            self.evaluated.setdefault(network, (t.number, t.values, _numbers(t.user_attrs)))

    def loop(self) -> None:
        """Keep every slot busy until the study holds n_trials complete trials.

        A repeat is a complete trial (as in Optuna's recipe for duplicated samples) and counts: n_trials means
        what Optuna, a resume and `study.optimize` count, and a sampler that keeps proposing evaluated networks
        ends the study rather than spinning. So a study may train fewer than n_trials networks: `repeats` says
        how many fewer.

        With `in_order`, trials on workers are told in the order they were asked (a result that comes early waits
        in Ray's object store). Then what the sampler has seen when it proposes a trial depends on the trial's
        number and the number of slots alone, not on which worker finished first: the same seed makes the same
        study. A slot may idle while the oldest trial finishes."""
        n_trials = self.config.n_trials
        bar = tqdm(total=n_trials, initial=self.complete, unit="trial", dynamic_ncols=True)
        try:
            while self.complete < n_trials:
                while len(self.running) < self.workers.slots and self.complete + self.pending < n_trials:
                    self.start()
                bar.set_postfix(running=len(self.running), failed=self.failed, repeats=self.repeats)  # while they run
                running = list(self.running)  # in the order the trials were asked
                for ref in self.workers.wait(running[:1] if self.config.ray.in_order else running):
                    self.finish(ref)
                bar.n = self.complete
                bar.refresh()
                if self.failed >= n_trials:
                    raise UserError(f"stopping: {self.failed} trials failed; see the FAILED runs in MLflow")
        finally:
            bar.close()

    @property
    def pending(self) -> int:
        """Trials asked and not told yet: on a worker, or waiting for one that is."""
        return len(self.running) + sum(map(len, self.waiting.values()))

    def start(self) -> None:
        """Ask for a trial, predict what needs no training on the driver, evaluate the rest on a worker.
        A network evaluated before is told its result now; one on a worker waits for it, without a slot."""
        trial = self.study.ask()
        candidate = self.space.sample(trial)
        layers = self.space.layers(candidate)
        predicted = objectives.metrics(layers, self.predictor.predict(layers), self.config.file)
        constrain(trial, predicted, self.config.budget)
        outside = "; ".join(self.predictor.extrapolated(layers))
        trial.set_user_attr(domain.EXTRAPOLATED, outside)
        run_id = self.run_ids[trial.number] = self.tracker.start_trial(
            trial.number, candidate.as_dict(), self.tags | {"baseline": trial.user_attrs.get("baseline", ""),
                                                            "latency.extrapolated": outside or "no"})
        network = identity(self.space, candidate)
        if network in self.evaluated:
            self.repeat(trial, run_id, self.evaluated[network])
        elif network in self.waiting:
            self.waiting[network].append((trial, predicted, run_id))
        else:
            ref = self.inputs.submit(self.workers, candidate, trial_seed(self.config.seed, trial.number))
            self.running[ref] = (trial, predicted, run_id, network)
            self.waiting[network] = []

    def finish(self, ref: Any) -> bool:
        """Tell Optuna and MLflow how a trial ended, and the trials waiting for its network the same; True if it
        completed. If it failed, they fail with it: simplest, and the sampler may propose the network again."""
        trial, predicted, run_id, network = self.running.pop(ref)
        waiting = self.waiting.pop(network)
        try:
            (measured, weights), node = self.workers.result(ref)
        except TrialFailed as e:
            self._fail(trial, predicted, run_id, str(e))
            for t, p, r in waiting:
                self._fail(t, p, r, f"repeat of trial {trial.number}, which failed: {e}")
            return False
        values = predicted | measured
        for key, value in values.items():
            trial.set_user_attr(key, value)
        self.tracker.log_weights(run_id, weights)  # before Optuna hears of it: a complete trial has its weights
        self.evaluated[network] = (trial.number, [values[n] for n in self.config.objectives], values)
        self.study.tell(trial, self.evaluated[network][1])
        self.tracker.end_trial(run_id, "COMPLETE", values, {"node": node})
        self._completed()
        for t, _, r in waiting:
            self.repeat(t, r, self.evaluated[network], weights)
        return True

    def repeat(self, trial: optuna.Trial, run_id: str, of: tuple[int, list[float], dict[str, float]],
               weights: Mapping[str, Any] | None = None) -> None:
        """Tell `trial` the result of trial `of`, the same network, instead of training it again (no Ray slot):
        its values, metrics and weights (so promote can export either), user attr and MLflow tag repeat_of."""
        number, values, metrics = of
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr(REPEAT_OF, number)
        weights = self._weights(number) if weights is None else weights
        if weights is not None:
            self.tracker.log_weights(run_id, weights)
        self.study.tell(trial, values)
        self.tracker.end_trial(run_id, "COMPLETE", metrics, {REPEAT_OF: str(number)})
        self.repeats += 1
        self._completed()

    def _fail(self, trial: optuna.Trial, predicted: Mapping[str, float], run_id: str, error: str) -> None:
        self.study.tell(trial, state=TrialState.FAIL)
        self.tracker.end_trial(run_id, "FAIL", predicted, {"error": error[:5000]})
        self.failed += 1

    def _weights(self, number: int) -> Mapping[str, Any] | None:
        """Trial `number`'s stored weights; None if its run has none (tracking changed on resume, an old study)."""
        run_id = self.run_ids.get(number)
        if run_id is None:  # a trial of an earlier driver
            run = self.tracker.trial_runs().get(number)
            run_id = run.info.run_id if run else None
        try:
            return self.tracker.weights(run_id) if run_id else None
        except UserError:
            return None

    def _completed(self) -> None:
        """Count a complete trial; every pareto.every of them, publish the front."""
        self.complete += 1
        if self.complete % self.config.refresh_every == 0:
            front.publish(self.study, self.tracker, self.config, self.complete)

    def stop(self, overrides: Sequence[str]) -> None:
        """Ctrl-C: keep the trials that have finished (told in order, their results may wait for an older trial),
        cancel the running ones, FAIL them (and those waiting for them) in Optuna, KILLED in MLflow, and say how
        to resume."""
        while ready := self.workers.wait(list(self.running), timeout=0):
            self.finish(ready[0])
        self.workers.cancel(list(self.running))
        stopped = [(t, p, r) for t, p, r, _ in self.running.values()] + [w for ws in self.waiting.values() for w in ws]
        for trial, predicted, run_id in stopped:
            self.study.tell(trial, state=TrialState.FAIL)
            self.tracker.end_trial(run_id, "KILLED", predicted, {"error": "stopped by the user"})
        self.tracker.end_study({"complete_trials": self.complete, "repeats": self.repeats}, status="KILLED")
        print(f"\nstopped: {self.complete} complete trials kept, {len(stopped)} running trial(s) marked "
              f"FAIL. Resume with the same command: python -m search {' '.join(overrides)}".rstrip(), flush=True)


def trial_seed(seed: int, number: int) -> int:
    """Trial `number`'s fine-tuning seed: the same trial of the same study always trains the same way."""
    return seed * 100_003 + number


def constrain(trial: optuna.Trial, predicted: Mapping[str, float], budget: Mapping[str, float | None]) -> None:
    """Each budget as one of the trial's Optuna constraints (feasible at <= 0), set before it runs: every
    sampler reads them from the trial, and `pareto.points` keeps infeasible trials off the front."""
    for key, bound in budget.items():
        if bound is not None:
            trial.set_constraint(key, predicted[key] - bound)


def _numbers(attrs: Mapping[str, Any]) -> dict[str, float]:
    """A trial's metrics: its numeric user attrs (repeat_of is a trial number, not a metric)."""
    return {k: v for k, v in attrs.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != REPEAT_OF}


def _target_tags(config: StudyConfig, predictor: latency.Predictor) -> dict[str, str]:
    return {"target": config.target["name"], "target.description": config.target["description"],
            "space": config.space["name"], "data": config.data["name"], **predictor.describe()}
