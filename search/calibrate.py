"""`python -m search.calibrate`: measure networks of a space on a target (or import measurements
made elsewhere), fit the target's latency predictor, score it on measurements it was not fitted
on, and save it as a versioned data file. The last line printed is the report as JSON."""
from __future__ import annotations

import json
import random
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, cast

import yaml
import numpy as np
from tqdm import tqdm

import spaces

from . import fitting, latency, measurements, preflight, published, runners
from .cli import command
from .config import CONF_DIR, ROOT, ConfigError, space_error, validate_calibration
from .domain import Domain
from .errors import UserError
from .measurements import Measurement

if TYPE_CHECKING:
    from optuna.trial import BaseTrial

CONFIG_NAME = "calibrate"


class LevelTrial:
    """A stand-in for an Optuna trial that draws every choice of one kind (widths, bits, sparsity, ...) near one
    level of that kind per network, so the calibration set spans the space from its smallest networks to its
    largest and from all-float to all-integer ones, independently (independent per-layer draws would average out
    into look-alike middle-sized networks; one level for every kind would make the wide networks the float ones,
    and a fit could not tell precision's cost from width's)."""

    def __init__(self, rng: random.Random, spread: float = 0.3):
        self.rng, self.spread = rng, spread
        self.levels: dict[str, float] = {}

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        level = self.levels.setdefault(name.split(".")[0], self.rng.random())
        if self.rng.random() < self.spread:
            return self.rng.choice(list(choices))
        ordered = sorted(choices, key=lambda c: (isinstance(c, str), c))
        return ordered[min(int(level * len(ordered)), len(ordered) - 1)]


def calibration_set(space: spaces.Space, n: int, seed: int) -> list[spaces.Candidate]:
    """`n` distinct networks: the space's baselines first (every study's reference points; the float one is the
    reference network measurements are checked against), then networks drawn by `LevelTrial`."""
    rng = random.Random(seed)
    baselines = space.baselines() if isinstance(space, spaces.SearchSpace) else {}  # fbnet (phone measurements): none
    found = {spaces.Candidate.of(space.name, params): None for params in baselines.values()}
    while len(found) < n:
        found[space.sample(cast("BaseTrial", LevelTrial(rng)))] = None  # duck-typed: suggest_categorical only
    return list(found)[:n]


def measure(space: spaces.Space, candidates: list[spaces.Candidate], runner_cfg: Mapping[str, Any], seed: int
            ) -> tuple[list[Measurement], dict, float | None]:
    """Export each candidate at its real per-layer precision and shapes (in the runner's file format:
    `runner.backend`), time it with the runner, and return measurements, the runner's settings and the noise floor:
    how well a network's measurement repeats (the median over networks of their even against odd passes, for
    runners that measure in passes), else the relative spread (IQR / median) of the reference network's repeated
    measurements through the run."""
    from .workers import Workers

    runner = make_runner(runner_cfg, seed)
    backend = runner.backend
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        with Workers(None, None, cpus_per_trial=1, gpus_per_trial=0) as workers:
            # Converting is the slow part (seconds per .tflite): one Ray task per network, as many at once as CPUs;
            # Ray is shut down again before anything is timed.
            pending = {workers.submit(_export, space, c, backend, seed * 100_003 + i): str(i)
                       for i, c in enumerate(candidates)}
            with tqdm(total=len(pending), desc="exporting", unit="network", dynamic_ncols=True) as bar:
                while pending:
                    for ref in workers.wait(list(pending)):
                        key = pending.pop(ref)
                        content, suffix = workers.result(ref)[0]
                        paths[key] = Path(tmp) / f"net{key}{suffix}"
                        paths[key].write_bytes(content)
                        bar.update()
        paths = {str(i): paths[str(i)] for i in range(len(candidates))}
        timings, reference = runner.measure(paths, paths["0"])
        rows = [Measurement(str(i), c, timings[str(i)].median_ms, timings[str(i)].iqr_ms, timings[str(i)].runs)
                for i, c in enumerate(candidates)]
    repeats = [t.repeat for t in timings.values() if t.repeat is not None]
    ref_ms = np.array([t.median_ms for t in reference])
    drift = float(np.subtract(*np.percentile(ref_ms, [75, 25])) / np.median(ref_ms)) if len(ref_ms) > 1 else None
    floor = float(np.median(repeats)) if repeats else drift
    if floor is not None and floor > 0.05:
        print(f"warning: the measurements repeat only within {floor:.0%} (the reference network's latency varied "
              f"by {drift:.0%} during the run): this machine was busy or changed speed; measure again on a quiet "
              "machine", file=sys.stderr)
    return rows, runner.settings(), floor


def _export(space: spaces.Space, candidate: spaces.Candidate, backend: str, seed: int) -> tuple[bytes, str]:
    """One calibration network as a file's bytes (a Ray task): built at its real precision and shapes, its
    quantizers' ranges set by random images (the speed, not the values, matters)."""
    import torch

    from . import backends

    module = backends.get(backend)
    net = space.build(candidate).eval()
    shape = space.input_shape_of(candidate)  # the resolution the candidate runs at
    with torch.no_grad():
        net(torch.from_numpy(np.random.default_rng(seed).standard_normal((8, *shape)).astype(np.float32)))
    with tempfile.TemporaryDirectory() as tmp:
        return module.export(net, shape, Path(tmp) / f"net{module.SUFFIX}").read_bytes(), module.SUFFIX


def make_runner(runner_cfg: Mapping[str, Any], seed: int) -> runners.Runner:
    """The configured runner with its settings (a bad setting is a ConfigError naming the runner)."""
    try:
        return runners.make(runner_cfg, seed)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"runner: {runner_cfg['kind']} runner: {e}") from None


def noise_floor(rows: Sequence[Measurement]) -> float | None:
    """For imported files: the median relative spread (IQR / median) of each row's repeated runs."""
    spreads = [r.iqr_ms / r.latency_ms for r in rows if r.iqr_ms is not None]
    return float(np.median(spreads)) if spreads else None


@dataclass(frozen=True)
class Request:
    """What calibration reads of its config, built once by `check` after every value is checked."""

    target: Mapping[str, Any]  # the target group: kernels, measurement and predictor files, proxy
    space: Mapping[str, Any]  # the space's settings: its group and the input it is measured at
    runner: str  # who measures: host, litert or adb; file: a measurement file is fitted on
    runner_settings: Mapping[str, Any]  # the measuring runner's config (kind and settings); empty for file
    source: Path | None  # the measurement file fitted on (benchmarks=, runner=file); None: measured now
    networks: int  # networks measured
    seed: int  # which networks, and the held-out share
    evaluate: Path | None  # a measurement file scored on instead of a held-out share
    holdout: float
    fit_rows: int | None
    tracking_uri: str
    experiment: str

    @classmethod
    def of(cls, cfg: Mapping[str, Any]) -> Request:
        validate_calibration(cfg)
        target, chosen = cfg["target"], cfg["runner"]
        benchmarks = Path(cfg["benchmarks"]) if cfg["benchmarks"] else None
        if cfg["space"]["name"] != target["measurements"]["space"] and not benchmarks:
            raise ConfigError(f"space: target {target['name']} is measured on space {target['measurements']['space']!r}; "
                              f"pass space={target['measurements']['space']}")
        runner, source = _plan(target, chosen["kind"], benchmarks)
        settings = {} if source else chosen if chosen["kind"] == runner else _runner_file(runner)
        # a space that fixes its input (fbnet) keeps it; others are measured at the configured one
        space = {"input_shape": cfg["input_shape"], "num_classes": cfg["num_classes"], **cfg["space"]}
        return cls(target, space, runner, settings, source, cfg["networks"], cfg["seed"],
                   Path(cfg["evaluate"]) if cfg["evaluate"] else None, cfg["holdout"], cfg["fit_rows"],
                   cfg["tracking"]["uri"], cfg["tracking"]["experiment"])

    def build_space(self) -> spaces.Space:
        try:
            return spaces.create(**self.space)
        except (TypeError, ValueError) as e:
            raise space_error(e) from None


def check(cfg: Mapping[str, Any]) -> Request:
    """Everything calibration reads from the user, before anything is measured or written: the
    values, the space, every measurement file it will read (in full), the runner's settings and
    the tracking server."""
    r = Request.of(cfg)
    space = r.build_space()
    if r.source:
        rows_to_fit(r, space)  # reads the evaluate file too
    else:
        make_runner(r.runner_settings, r.seed)
        if r.evaluate:
            measurements.read(r.evaluate, space)
    preflight.reachable("tracking.uri", r.tracking_uri)
    return r


def calibrate(r: Request) -> latency.Report:
    target = r.target
    space = r.build_space()
    floor, settings = None, {"runner": "file"}
    if r.source:
        source, rows = r.source, measurements.read(r.source, space)
    else:
        print(f"measuring {r.networks} {space.name} networks with the {r.runner} runner ...", file=sys.stderr)
        rows, settings, floor = measure(space, calibration_set(space, r.networks, r.seed), r.runner_settings, r.seed)
        source = Path(target["measurements"]["file"])
        source.parent.mkdir(parents=True, exist_ok=True)
        measurements.write(source, space, rows)
    fit_rows, held_out = rows_to_fit(r, space, rows)
    networks = [space.layers(row.candidate) for row in fit_rows]
    kernels = latency.declared(target)["kernels"]
    extra: dict[str, Any] = {}
    if target.get("int8_pairs"):
        extra["int8_speedup"] = fitted_speedup(target)
    if target.get("published"):  # one structure over the reference set and the published ones, a scale per set
        sets = {REFERENCE: (networks, [row.latency_ms for row in fit_rows]), **published_sets(target)}
        tile = 1
        coefficients, scales = fitting.fit_sets(sets, REFERENCE, kernels, target["sparse_kernels"],
                                                weights={REFERENCE: target["published"]["reference_weight"]})
        extra["sets"] = {name: {"scale": scales[name], "networks": len(sets[name][0])} for name in sets}
        networks = [n for group, _ in sets.values() for n in group]
    else:
        tile, coefficients = fitting.fit_tiled(networks, [row.latency_ms for row in fit_rows], kernels,
                                               target["sparse_kernels"])
    proxy = target.get("proxy")
    predictor = latency.Predictor(target["name"], coefficients=coefficients, channel_tile=tile,
                                  **latency.declared(target))
    # Scored unscaled: the held-out rows are measurements of the measured device itself.
    measured_device = latency.Predictor(**{**asdict(predictor), "scale": 1.0})
    absolute = (target.get("published") or {}).get("absolute")
    if absolute:  # the coefficients in the milliseconds of the set that stands for the target
        if absolute not in extra["sets"]:
            raise UserError(f"target.published.absolute: no set {absolute!r}; the sets: {', '.join(extra['sets'])}")
        factor = extra["sets"][absolute]["scale"]
        predictor = latency.Predictor(**{**asdict(predictor),
                                         "coefficients": {k: v * factor for k, v in coefficients.items()}})
    report = latency.Report.of([measured_device.predict(space.layers(row.candidate)) for row in held_out],
                               [row.latency_ms for row in held_out], floor if floor is not None else noise_floor(rows))
    provenance = {"file": _shown(target["predictor"]), "measurements": _shown(source), "digest": measurements.digest(rows),
                  "fit_rows": len(fit_rows), "heldout_rows": len(held_out), "space": space.name,
                  "runner": settings, "report": asdict(report),
                  "proxy": f"{proxy['device']}; {proxy['assumption']}" if proxy else "none", **extra}
    predictor = latency.Predictor(**{**asdict(predictor), "provenance": provenance,
                                     "domain": Domain.of(networks).as_dict()})
    predictor.save(target["predictor"])
    _log(r, predictor, report, source)
    return report


REFERENCE = "reference"  # the target's own measurement set, in whose milliseconds the coefficients are


def published_sets(target: Mapping[str, Any]) -> dict[str, tuple[list, list[float]]]:
    """The float sets of the target's published tables (`target.published`), as (networks, latencies)."""
    return published.float_sets(published.read(target["published"]["file"])[0])


def fitted_speedup(target: Mapping[str, Any]) -> dict[str, Any]:
    """The int8 speed-up fitted from the target's fp32/int8 pairs; UserError if the target's YAML does not hold
    the fitted value and interval (the YAML is where the study reads them; the fit is where they come from)."""
    pairs = target["int8_pairs"]
    fit = published.speedup(pairs["file"], pairs["core_class"], pairs["eras"])
    value, interval, n = fit.newest
    declared = (target["speedups"]["int8"], tuple((target.get("speedup_range") or {}).get("int8", ())))
    if declared != (value, interval):
        raise UserError(f"target.speedups.int8: the pairs fit {value} (90% interval {list(interval)}, {n} pairs of "
                        f"the newest era); conf/target/{target['name']}.yaml says {declared[0]} "
                        f"{list(declared[1])}: write the fitted values there")
    return {"value": value, "interval": list(interval), "by_era": {k: list(v) for k, v in fit.eras.items()}}


def rows_to_fit(r: Request, space: spaces.Space, rows: list[Measurement] | None = None
                ) -> tuple[list[Measurement], list[Measurement]]:
    """The request's rows to fit on and to score on: from `rows`, else its measurement file; scored on its evaluate
    file, else on a seeded held-out share."""
    rows = measurements.read(cast(Path, r.source), space) if rows is None else rows  # no rows: a file's request
    held_out = measurements.read(r.evaluate, space) if r.evaluate else None
    return split(rows, r.seed, r.holdout, r.fit_rows, held_out)


def split(rows: list[Measurement], seed: int, holdout: float, fit_rows: int | None = None,
          held_out: list[Measurement] | None = None) -> tuple[list[Measurement], list[Measurement]]:
    """Rows to fit on (at most `fit_rows` of them, a seeded random subset) and rows to score on: `held_out` when
    given (every row is then fitted on), else a seeded `holdout` share."""
    order = list(rows)
    random.Random(seed).shuffle(order)
    if held_out is None:
        cut = max(1, round(len(order) * holdout))
        held_out, order = order[:cut], order[cut:]
    if fit_rows:
        order = order[:fit_rows]
    if len(order) < 2 or not held_out:
        raise UserError(f"calibration needs at least 2 rows to fit and 1 to score; got {len(order)} and {len(held_out)}")
    return order, held_out


def _plan(target: Mapping[str, Any], runner: str, benchmarks: Path | None) -> tuple[str, Path | None]:
    """The runner that measures (host, litert, adb) or file, and the measurement file to read if any."""
    if runner == "auto":
        runner = target["runner"]["kind"] if target["runner"]["kind"] in runners.LOCAL else "file"
    if benchmarks:
        return runner, benchmarks
    if runner == "file":
        source = Path(target["measurements"]["file"])
        if not source.exists():
            raise UserError(f"target.measurements.file: {source} does not exist; measure with runner=host or runner=adb")
        return runner, source
    return runner, None


def _runner_file(runner: str) -> Mapping[str, Any]:
    """A runner's settings as its config file has them (runner=auto chose it)."""
    return yaml.safe_load((CONF_DIR / "runner" / f"{runner}.yaml").read_text())


def _shown(path: str | Path) -> str:
    """A project file by its path in the project (the same on every machine), others as given."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _log(r: Request, predictor: latency.Predictor, report: latency.Report, source: Path) -> None:
    from . import tracking  # with MLflow's INFO lines routed to the log file

    client = tracking.client(r.tracking_uri)
    experiment = client.get_experiment_by_name(r.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(r.experiment)
    space = r.space["name"]
    run = client.create_run(experiment_id, run_name=f"{predictor.target}-{space}",
                            tags={"target": predictor.target, "latency.proxy": predictor.provenance["proxy"]})
    rid = run.info.run_id
    for key, value in {"target": predictor.target, "space": space, "measurements": str(source),
                       "digest": predictor.provenance["digest"], "fit_rows": predictor.provenance["fit_rows"],
                       "runner": json.dumps(predictor.provenance["runner"])}.items():
        client.log_param(rid, key, str(value))
    for key, value in asdict(report).items():
        if value is not None:
            client.log_metric(rid, key, float(value))
    client.log_artifact(rid, r.target["predictor"])
    client.set_terminated(rid)


def _run(cfg: dict[str, Any], checked: Request | None) -> None:
    print(json.dumps(asdict(calibrate(checked or check(cfg)))))


def main() -> None:
    command(CONFIG_NAME, check, _run)


if __name__ == "__main__":
    main()
