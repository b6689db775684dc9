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
from typing import Any, Iterator, Mapping

import optuna
import yaml
from hydra.utils import instantiate
from optuna.trial import TrialState
from tqdm import tqdm

import spaces
from spaces.candidate import identity

from . import data as datasets
from . import domain, latency, locks, objectives, pareto, plots, preflight, storage, supernet
from .config import ConfigError, validate
from .errors import UserError
from .evaluate import evaluate
from .pareto import REPEAT_OF
from .tracking import Tracker
from .workers import TrialFailed, Workers

# Optuna's INFO lines ("A new study created ...") go where the command's logging sends them (the run
# folder's log file; the console shows warnings), not to a console handler of Optuna's own.
optuna.logging.disable_default_handler()
optuna.logging.enable_propagation()


def run(cfg: Mapping[str, Any], overrides: list[str] = (), data: datasets.Dataset | None = None) -> optuna.Study:
    """Run (or resume) the study described by a resolved config until it holds n_trials
    complete trials, on `data` (loaded from the config when None)."""
    validate(cfg)
    preflight.refuse_changed(cfg)
    os.environ.setdefault("MPLCONFIGDIR", str(Path(cfg["cache_dir"]) / "matplotlib"))  # its font cache, not in HOME
    if data is None:
        data = datasets.load(cfg["data"], cfg["seed"], cfg["cache_dir"])
    space_settings = {**cfg["space"], "input_shape": data.input_shape, "num_classes": data.num_classes}
    space = spaces.create(**space_settings)
    predictor = latency.for_target(cfg["target"])
    ray_cfg = cfg["ray"]
    with locks.driver(Path(cfg["study"]["dir"]), cfg["study"]["name"]), Workers(ray_cfg["address"], ray_cfg["num_cpus"], ray_cfg["cpus_per_trial"],
                                 ray_cfg["gpus_per_trial"], ray_cfg["max_retries"]) as workers:
        data_ref = workers.share(data)
        init = supernet.initial_weights(space_settings, cfg["supernet"]["init"]) if cfg["supernet"]["init"] else None
        key = supernet.cache_key(cfg["space"], cfg["data"], cfg["seed"],
                                 {**cfg["supernet"], "init": supernet.init_digest(init)})
        started = time.perf_counter()
        trained, cached = supernet.load_or_train(key, cfg["cache_dir"], lambda: _train_supernet(
            workers, key, space_settings, data_ref, cfg, init))
        print(f"supernet {key}: {'from cache' if cached else 'trained'} in {time.perf_counter() - started:.0f} s, "
              f"full-width validation accuracy {trained.val_accuracy:.2f}%", flush=True)

        study = _open(cfg, space)
        tracker = Tracker(cfg["tracking"]["uri"], cfg["study"]["name"])
        recovered = recover(study, tracker)
        if recovered:
            print(f"resumed: {recovered} trial(s) a stopped driver left running are marked FAIL (KILLED in MLflow)")
        tags = _target_tags(cfg, predictor)
        tracker.start_study(cfg, list(overrides), yaml.safe_dump(cfg, sort_keys=False), tags)
        tracker.log_study({"supernet_val_accuracy": trained.val_accuracy}, {"supernet.key": key})
        settings = Settings.of(cfg)
        driver = Driver(settings, study, tracker, workers, space, predictor, tags,
                        Inputs(space_settings, data_ref, workers.share(trained), cfg["finetune"]),
                        complete=len(study.get_trials(states=(TrialState.COMPLETE,))))
        try:
            with _interruptible():
                driver.loop()
        except KeyboardInterrupt:
            driver.stop(overrides)
            raise
        pts = publish_front(study, tracker, settings, driver.complete)
        outside = domain.extrapolated(study.trials)
        tracker.end_study({"complete_trials": driver.complete, "repeats": driver.repeats,
                           "extrapolated_trials": len(outside)})
    _summary(pts, settings, tracker.experiment_id, driver.complete, driver.repeats)
    domain.summary(outside, driver.complete, cfg["target"]["name"])
    return study


def _train_supernet(workers: Workers, key: str, space_settings: Mapping[str, Any], data_ref: Any,
                    cfg: Mapping[str, Any], init: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train on one worker with the largest node's CPUs, with a progress bar (batches, epoch, ETA)."""
    with tqdm(desc=f"supernet {key}", unit="batch", dynamic_ncols=True) as bar:
        def report(p: supernet.Progress) -> None:
            bar.total = p.steps
            bar.set_postfix_str(f"epoch {p.epoch}/{p.epochs}" if p.stage == "training" else p.stage, refresh=False)
            bar.update(p.step - bar.n)

        return workers.stream(supernet.train, space_settings, data_ref, cfg["supernet"], cfg["seed"],
                              None if init is None else workers.share(init), report=report, cpus=workers.cpus)


def _open(cfg: Mapping[str, Any], space: spaces.SearchSpace) -> optuna.Study:
    """Create or load the study; a new one starts with the baselines, a resumed one draws new points.
    Budgets reach the sampler as each trial's constraints (`Driver.start`), whatever the sampler."""
    directions = [objectives.DIRECTIONS[o] for o in cfg["objectives"]]
    where = storage.Location.of(cfg["study"])
    study = optuna.create_study(study_name=where.name, storage=storage.for_study(where), directions=directions,
                                load_if_exists=True)
    if study.directions != [optuna.study.StudyDirection[d.upper()] for d in directions]:
        raise ConfigError(f"objectives: study {cfg['study']['name']!r} was created with other objectives; "
                          "use another study.name")
    if preflight.CONFIG_ATTR not in study.user_attrs:  # a new study, or one made before configs were recorded
        study.set_user_attr(preflight.CONFIG_ATTR, preflight.meaning(cfg))
    if study.metric_names != list(cfg["objectives"]):
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what optuna-dashboard reads
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(cfg["objectives"]))
    sampler = dict(cfg["sampler"])
    seed = (cfg["seed"] if cfg["search_seed"] is None else cfg["search_seed"]) + len(study.trials)
    if "base_sampler" in sampler:  # a wrapper (PartialFixedSampler): the sampler it wraps takes the seed
        study.sampler = instantiate({**sampler, "base_sampler": {**sampler["base_sampler"], "seed": seed}})
    else:  # config.validate admits only samplers that take a seed
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
        t = states.get(number)
        if t is not None and t.state == TrialState.COMPLETE:
            repeat = {REPEAT_OF: str(t.user_attrs[REPEAT_OF])} if REPEAT_OF in t.user_attrs else {}
            tracker.end_trial(run.info.run_id, "COMPLETE", _numbers(t.user_attrs), repeat)
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
class Settings:
    """What the driver, the front and the summary read of the config, read once (`config.validate` has checked
    every value, naming its key)."""

    where: storage.Location  # its name, and the run folder the front's files go in
    n_trials: int  # complete trials the study should hold
    seed: int  # with the trial number, each trial's fine-tuning seed
    objectives: tuple[str, ...]
    budget: Mapping[str, float | None]  # upper bounds, as Optuna constraints
    file: str  # the target's deployable format: what size_kb counts
    refresh_every: int  # publish the front every this many complete trials
    reference: Mapping[str, float]  # the hypervolume's reference point
    tracking_uri: str
    in_order: bool  # tell results in the order trials were asked: the same seed makes the same study

    @classmethod
    def of(cls, cfg: Mapping[str, Any]) -> Settings:
        return cls(storage.Location.of(cfg["study"]), cfg["n_trials"], cfg["seed"],
                   tuple(cfg["objectives"]), dict(cfg["budget"]), cfg["target"]["file"], cfg["pareto"]["every"],
                   dict(cfg["pareto"]["reference"]), cfg["tracking"]["uri"], cfg["ray"]["in_order"])


@dataclass(frozen=True)
class Inputs:
    """What every trial's evaluation gets besides its candidate and seed; the large ones as Ray object refs,
    put in the object store once per study."""

    space: Mapping[str, Any]  # the space's settings: its config and the data's shape
    data: Any  # ref to the Dataset
    supernet: Any  # ref to the trained supernet's weights
    finetune: Mapping[str, Any]


@dataclass
class Driver:
    """The running study: asks Optuna for trials while slots are free, sends them to Ray, and tells
    Optuna and MLflow how each one ended. No network is trained twice: a trial of a network the study
    has evaluated, or is evaluating, is told that result instead (`repeat`)."""

    settings: Settings
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
        n_trials = self.settings.n_trials
        bar = tqdm(total=n_trials, initial=self.complete, unit="trial", dynamic_ncols=True)
        try:
            while self.complete < n_trials:
                while len(self.running) < self.workers.slots and self.complete + self.pending < n_trials:
                    self.start()
                bar.set_postfix(running=len(self.running), failed=self.failed, repeats=self.repeats)  # while they run
                running = list(self.running)  # in the order the trials were asked
                for ref in self.workers.wait(running[:1] if self.settings.in_order else running):
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
        predicted = objectives.metrics(layers, self.predictor.predict(layers), self.settings.file)
        constrain(trial, predicted, self.settings.budget)
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
            ref = self.workers.submit(evaluate, self.inputs.space, candidate, self.inputs.data, self.inputs.supernet,
                                      self.inputs.finetune, trial_seed(self.settings.seed, trial.number))
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
        self.evaluated[network] = (trial.number, [values[n] for n in self.settings.objectives], values)
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
        if self.complete % self.settings.refresh_every == 0:
            publish_front(self.study, self.tracker, self.settings, self.complete)

    def stop(self, overrides: list[str]) -> None:
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


def publish_front(study: optuna.Study, tracker: Tracker, settings: Settings, step: int) -> list[pareto.Point]:
    """The front as it stands: files in the study folder (pareto.csv, .html, .png), the same files on the
    study's MLflow run with its size and hypervolume, and each trial run tagged pareto=true|false and its rank."""
    names = settings.objectives
    pts = pareto.points(study.trials, names)
    folder = settings.where.folder
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / "pareto.csv", folder / "pareto.html", folder / "pareto.png"]
    title = f"{study.study_name}: {len(pts)} networks evaluated, {len(pareto.front(pts))} on the front"
    pareto.write_csv(pts, files[0])
    plots.write_html(pts, names, files[1], title)
    plots.write_png(pts, names, files[2], title)
    metrics = {"pareto_size": len(pareto.front(pts)),
               "hypervolume": pareto.hypervolume(pts, names, settings.reference)}
    tracker.log_front(pts, files, metrics, step)
    return pts


def _target_tags(cfg: Mapping[str, Any], predictor: latency.Predictor) -> dict[str, str]:
    return {"target": cfg["target"]["name"], "target.description": cfg["target"]["description"],
            "space": cfg["space"]["name"], "data": cfg["data"]["name"], **predictor.describe()}


def _summary(pts: list[pareto.Point], settings: Settings, experiment_id: str, complete: int, repeats: int) -> None:
    front = sorted(pareto.front(pts), key=lambda p: p.values["latency_ms"])
    name = settings.where.name
    print(f"\nstudy {name}: {complete} complete trials ({repeats} repeats of a network already evaluated, "
          f"not trained again), {len(front)} on the Pareto front of {' / '.join(settings.objectives)}:")
    print(f"{'trial':>6} {'accuracy %':>10} {'latency ms':>10} {'size KB':>9}  baseline")
    for p in front:
        v = p.values
        print(f"{p.trial:>6} {v['accuracy']:>10.2f} {v['latency_ms']:>10.2f} {v['size_kb']:>9.1f}  {p.baseline}")
    print(f"front: {settings.where.folder}/pareto.html (and on the study's MLflow run)")
    print(f"browse: {runs_link(settings.tracking_uri, experiment_id)}")
    print(f"promote: python -m search.promote study.name={name} pick=knee")


def runs_link(uri: str, experiment_id: str) -> str:
    """Where the study's runs table is. MLflow 3's UI opens an experiment on its GenAI overview; the
    `/runs` page is the table (for a local store, at the address `mlflow ui` serves by default)."""
    page = f"#/experiments/{experiment_id}/runs"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {uri}, then open http://127.0.0.1:5000/{page}"
