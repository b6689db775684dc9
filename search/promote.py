"""`python -m search.promote study.name=NAME [pick=knee | pick=max_accuracy latency_budget_ms=.. |
pick=fastest|smallest max_drop=.. | trial=N]`: one trial of a study becomes deployable files in the MLflow model registry, and only if
each file behaves like the trial did.

The pick ranks trials by predicted latency, or with `rank_by=onnxruntime|xnnpack|phone` by latency measured:
every trial of the predicted front is exported and timed together on that runtime, the front is ranked again,
and the pick (knee, most accurate within `latency_budget_ms`, fastest within `max_drop`) is made on what was
measured.

The trial's network is rebuilt from its stored params (Optuna) and the fine-tuned weights its MLflow run
stored when it completed (`weights.npz`): nothing is re-trained, so nothing depends on training being
bit-for-bit repeatable. Each registered backend (`search.backends`: ONNX, `.tflite`) writes that network itself as
one file: channel-pruned layers physically smaller, unstructured zeros kept as zeros, every quantizer where the
network had it with the scale and zero point it trained with (nothing re-calibrated). Each file has its own gate:
it holds the network's precision plan (`audit`), and its runtime on the test split is within `tolerance` of the
trial's test accuracy and agrees with what the network computes on at least the backend's share (`min_agreement`,
`litert_min_agreement`); a file that fails stops the command before anything is registered, naming the layers
where it starts to differ where its format shows them. A trial whose precisions a format cannot hold gets no file
of it, and says why (`search.promotion.File.refused`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import optuna
import torch


from . import backends, pareto, parity, runners, storage
from . import data as datasets
from .cli import command
from .config import ConfigError, check_int, check_number, value_at
from .errors import UserError
from .promotion import File, Phone, Promotion
from .runners.adb import AdbError, AdbRunner
from .study_config import StudyConfig, recorded
from .tracking import Tracker

CONFIG_NAME = "promote"
WITHIN_DROP = {"fastest": "latency_ms", "smallest": "size_kb"}  # pick -> what it minimises within max_drop
PICKS = ("knee", "max_accuracy", *WITHIN_DROP)
RANK_BY = ("predicted", "onnxruntime", "xnnpack", "phone")


class ParityError(UserError):
    """The exported file does not behave like the trial."""


@dataclass(frozen=True)
class Request:
    """What the command is asked, checked once (`check`: each bad value named by its key) and then read as fields."""

    where: storage.Location
    tracking_uri: str
    cache_dir: str
    trial: int | None  # when set, `pick` is ignored
    pick: str
    rank_by: str
    latency_budget_ms: float | None
    size_budget_kb: float | None
    max_drop: float
    tolerance: float
    min_agreement: float
    litert_min_agreement: float
    model_name: str
    alias: str
    threads: int  # for the host latency measurements
    phone: Mapping[str, Any]  # phone.*: `phone` builds the adb runner from it

    @classmethod
    def of(cls, cfg: Mapping[str, Any]) -> Request:
        check(cfg)
        r = cls(storage.Location.of(cfg["study"]), cfg["tracking"]["uri"], cfg["cache_dir"], cfg["trial"],
                cfg["pick"], cfg["rank_by"], cfg["latency_budget_ms"], cfg["size_budget_kb"], cfg["max_drop"],
                cfg["tolerance"], cfg["min_agreement"], cfg["litert_min_agreement"], cfg["model_name"], cfg["alias"],
                cfg["latency_threads"], dict(cfg["phone"]))
        r.device()  # its settings checked before anything is exported
        return r

    def device(self) -> AdbRunner | None:
        """The adb runner `phone.*` asks for, or None without `phone.serial`."""
        p = self.phone
        if p["serial"] is None:
            return None
        try:
            return AdbRunner(str(p["serial"]), p["tool"], p["binary"] or "", list(p["flags"]), threads=p["threads"],
                             warmup=p["warmup"])
        except AdbError as e:
            raise ConfigError(f"phone: {e} (phone.tool, phone.binary, phone.threads, phone.warmup)") from None


def check(cfg: Mapping[str, Any]) -> None:
    name = value_at(cfg, "study.name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"study.name: the study to promote from, got {name!r}")
    if value_at(cfg, "pick") not in PICKS:
        raise ConfigError(f"pick: one of {', '.join(PICKS)}, got {cfg['pick']!r}")
    if value_at(cfg, "rank_by") not in RANK_BY:
        raise ConfigError(f"rank_by: one of {', '.join(RANK_BY)}, got {cfg['rank_by']!r}")
    if cfg["rank_by"] != "predicted" and cfg["pick"] == "smallest":
        raise ConfigError(f"rank_by: pick=smallest ranks by size, which no runtime measures (got {cfg['rank_by']})")
    if cfg["rank_by"] == "phone" and value_at(cfg, "phone.serial") is None:
        raise ConfigError("rank_by: phone needs phone.serial (and phone.binary) to measure on")
    check_int(cfg, "trial", 0, allow_none=True)
    check_number(cfg, "latency_budget_ms", allow_none=True)
    check_number(cfg, "size_budget_kb", allow_none=True)
    check_number(cfg, "max_drop", strict=False)
    check_number(cfg, "tolerance", strict=False)
    check_number(cfg, "min_agreement", strict=False)
    check_number(cfg, "litert_min_agreement", strict=False)
    check_int(cfg, "latency_threads", 1)
    journal = Path(cfg["study"]["dir"]) / storage.JOURNAL
    if not cfg["study"]["storage"] and not journal.is_file():
        raise ConfigError(f"study.name: no study {name!r} here: {journal} does not exist (study.dir, study.storage)")
    for key in ("model_name", "alias"):
        value = value_at(cfg, key)
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ConfigError(f"{key}: letters, digits and . _ - only, got {value!r}")
    if value_at(cfg, "phone.serial") is not None:
        check_number(cfg, "phone.seconds")
        check_int(cfg, "phone.parts", 2)


def choose(pts: list[pareto.Point], r: Request, objectives: Sequence[str], floor: float | None = None) -> pareto.Point:
    """The trial the config asks for: `trial=N`, else the front's knee, the most accurate one within budgets, or the
    fastest or smallest one at least `floor` accurate (`max_drop` points below the float baseline)."""
    try:
        if r.trial is not None:
            chosen = [p for p in pts if p.trial == r.trial]
            if not chosen:
                raise ValueError(f"trial: {r.trial} is not a complete trial of the study")
            return chosen[0]
        if r.pick == "knee":
            return pareto.knee(pts, objectives)
        if r.pick in WITHIN_DROP:
            assert floor is not None, "promote computes the floor for these picks"
            return pareto.least(pts, floor, WITHIN_DROP[r.pick])
        return pareto.most_accurate(pts, {"latency_ms": r.latency_budget_ms, "size_kb": r.size_budget_kb})
    except ValueError as e:
        raise UserError(str(e)) from None


def network(config: StudyConfig, data: datasets.Dataset, params: Mapping[str, Any],
            weights: Mapping[str, np.ndarray]) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    """A trial's network, rebuilt from its params (Optuna) and its fine-tuned weights (MLflow), and the (C, H, W)
    input it takes: the trial's resolution, which its files are exported at."""
    space = config.build_space(data.input_shape, data.num_classes)
    candidate = space.sample(optuna.trial.FixedTrial(dict(params)))
    net = space.build(candidate)
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
    return net.eval(), space.input_shape_of(candidate)


HOST_RUNNERS = {"xnnpack": "litert", "onnxruntime": "host"}  # rank_by runtime -> the runner timing it here


def host_runner(kind: str, threads: int) -> runners.Runner:
    """The runner on this machine for a `rank_by` runtime: XNNPACK runs `.tflite` files, onnxruntime ONNX ones."""
    return runners.get(HOST_RUNNERS[kind])(threads=threads)


def measured_front(pts: list[pareto.Point], study: optuna.Study, tracker: Tracker, config: StudyConfig,
                   data: datasets.Dataset, device: AdbRunner | None, r: Request) -> list[pareto.Point]:
    """The predicted front's trials with `latency_ms` measured on the `rank_by` runtime, ranked again: each is
    exported (a `.tflite` for XNNPACK and benchmark_model, else ONNX) and all are timed in one run, shuffled, so
    their ratios hold. A trial whose precisions the file cannot hold is left out, and the command says so."""
    kind = r.rank_by
    runner = device if kind == "phone" else host_runner(kind, r.threads)
    assert runner is not None, "check: rank_by=phone needs phone.serial"
    module = backends.get(runner.backend)
    runs = tracker.trial_runs()
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for p in pareto.front(pts):
            net, shape = network(config, data, study.trials[p.trial].params,
                                 tracker.weights(runs[p.trial].info.run_id))
            try:
                files[p.trial] = module.export(net, shape, Path(tmp) / f"trial-{p.trial}{module.SUFFIX}")
            except ValueError as e:
                print(f"rank_by={kind}: trial {p.trial} left out: {e}", file=sys.stderr)
        if not files:
            raise UserError(f"rank_by: no trial of the front can be exported for {kind}")
        timings, _ = runner.measure({str(t): f for t, f in files.items()}, next(iter(files.values())))
    measured = [dataclasses.replace(p, values={**p.values, "latency_ms": timings[str(p.trial)].median_ms})
                for p in pts if p.trial in files]
    for p, m in zip((p for p in pts if p.trial in files), measured):
        print(f"rank_by={kind}: trial {p.trial}: {m.values['latency_ms']:.4f} ms measured "
              f"(predicted on the target: {p.values['latency_ms']:.4f} ms)", file=sys.stderr)
    return pareto.rerank(measured, config.objectives)


def promote(r: Request) -> Promotion:
    device = r.device()  # one runner: the phone is checked and the tool pushed once
    name = r.where.name
    tracker = Tracker(r.tracking_uri, name, create=False)
    config = recorded(tracker.study_config())
    try:
        study = optuna.load_study(study_name=name, storage=storage.for_study(r.where))
    except KeyError:
        raise UserError(f"study.name: no Optuna study {name!r} in {r.where.url}") from None

    def splits() -> datasets.Dataset:  # the study's data, read only when a network is built
        return datasets.load(config.data, config.seed, r.cache_dir)

    data = None
    pts = pareto.points(study.trials, config.objectives)
    floor = None
    if r.trial is None and r.pick in WITHIN_DROP:  # from every trial: a measured front may lack the baseline
        try:
            floor = pareto.accuracy_floor(pts, r.max_drop)
        except ValueError as e:
            raise UserError(str(e)) from None
    point = choose(pts, r, config.objectives, floor)
    if r.trial is None and r.rank_by != "predicted":  # picked on measured latency; reported as the trial
        data = splits()
        measured = measured_front(pts, study, tracker, config, data, device, r)
        point = next(p for p in pts if p.trial == choose(measured, r, config.objectives, floor).trial)
    run_id = tracker.trial_runs()[point.trial].info.run_id
    kept = tracker.registered(r.model_name, name, point.trial)
    if kept is not None:  # promoting the same trial again only moves the alias
        tracker.set_alias(r.model_name, kept.version, r.alias)
        return Promotion.from_json({**json.loads(kept.tags["promotion"]), "version": str(kept.version),
                                    "alias": r.alias, "new_version": False})

    data = data or splits()
    net, shape = network(config, data, study.trials[point.trial].params, tracker.weights(run_id))
    x_test = parity.inputs(data.test, data.mean, data.std, shape=shape)
    folder = r.where.folder / "promoted"
    with tempfile.TemporaryDirectory() as tmp:
        shipped = [_ship(backends.get(b), net, shape, x_test, data.test.y, point, r, Path(tmp))
                   for b in backends.BACKENDS]
        files = [file for file, _ in shipped]
        on_phone = _on_phone(device, r, files, point.values["latency_ms"])
        folder.mkdir(parents=True, exist_ok=True)
        for i, file in enumerate(files):
            if file.path:
                final = folder / f"trial-{point.trial}{Path(file.path).suffix}"
                Path(file.path).replace(final)
                files[i] = dataclasses.replace(file, path=str(final), kb=final.stat().st_size / 1024)
    promotion = Promotion(
        study=name, trial=point.trial, model_name=r.model_name, version="", alias=r.alias, new_version=True,
        test_accuracy=point.values["test_accuracy"], predicted_latency_ms=point.values["latency_ms"],
        size_kb=point.values["size_kb"], files=tuple(files), phone=on_phone,
        ranked_by="predicted" if r.trial is not None else r.rank_by)
    onnx_path = promotion.file("onnx").path
    assert onnx_path is not None, "ONNX holds every precision"
    model = Path(onnx_path)  # the version's model, which mlflow.pyfunc loads
    example = parity.inputs(data.test, data.mean, data.std, 0, 2, shape)
    checks = {f"parity.{file.backend}": checked for file, checked in shipped if checked is not None}
    parity_tags = {tag: value for prefix, c in checks.items() for tag, value in c.as_tags(prefix).items()}
    version = tracker.register(run_id, model, example, backends.get("onnx").outputs(model, example),
                               promotion, {"target": config.target["name"],
                                           "torch_test_accuracy": f"{checks['parity.onnx'].torch_accuracy:.4f}", **parity_tags,
                                           "latency.proxy": (config.target.get("proxy") or {}).get(
                                               "assumption", "none: measured on the target itself")})
    return dataclasses.replace(promotion, version=version)


def _ship(module: backends.Backend, net, shape, x_test, labels, point: pareto.Point, r: Request,
          tmp: Path) -> tuple[File, parity.Parity | None]:
    """The trial as one backend's file in `tmp`, gated, timed on this CPU where a local runner runs its format; or
    why the trial's precisions cannot be that format. Its gate: the file holds the network's precision plan
    (`audit`: exact, the same on every CPU), then accuracy within `tolerance` of the trial's and top-1 agreement
    with what the network computes (`reference`) at least the backend's `GATE` setting."""
    what = f"{module.SUFFIX} file"
    try:
        path = module.export(net, shape, tmp / f"model{module.SUFFIX}")
    except ValueError as e:
        return File(module.NAME, refused=str(e)), None
    problems = module.audit(path, net, shape)
    if problems:
        raise ParityError(f"parity: trial {point.trial}'s {what} does not hold the network's precision plan: "
                          + "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
                          + "; nothing registered.")
    checked = parity.compare(module.outputs(path, x_test), parity.torch_logits(module.reference(net, shape), x_test),
                             labels)

    def where() -> str:  # only when refused: it runs the file layer by layer
        worst = parity.worst_layers(module.layer_errors(net, path, x_test[:64]))
        if not worst:
            return ""
        return " Layers where the file starts to differ: " + ", ".join(f"{layer} ({error:.1%} of its output)"
                                                                        for layer, error in worst)

    gate(checked, point, r, what, (module.GATE, getattr(r, module.GATE)), where)
    timing = runners.time_file(module.NAME, path, r.threads)
    host = (None, None) if timing is None else (timing.median_ms, timing.iqr_ms)
    return File(module.NAME, str(path), path.stat().st_size / 1024, checked.accuracy, checked.agreement,
                checked.max_logit_diff, *host), checked


def gate(checked: parity.Parity, point: pareto.Point, r: Request, what: str, least: tuple[str, float],
         where=lambda: "") -> None:
    """ParityError unless the file's test accuracy is within `tolerance` of the trial's and its top-1 agreement
    with the trial's network at least `least` (the setting's name and value), counted in whole images: on a small
    test split the share allows at least one disagreement, or a single flip would refuse a correct file; `where()`
    (computed only then) says where it differs."""
    gap = abs(checked.accuracy - point.values["test_accuracy"])
    key, minimum = least
    disagree = round(checked.images * (100 - checked.agreement) / 100)
    allowed = math.ceil(checked.images * (100 - minimum) / 100 - 1e-9)
    if gap > r.tolerance or disagree > allowed:
        raise ParityError(
            f"parity: trial {point.trial}'s {what} scores {checked.describe()} on the test split; the trial "
            f"scored {point.values['test_accuracy']:.2f}%: {gap:.2f} points (tolerance {r.tolerance}), "
            f"{disagree} images classified otherwise ({key} {minimum} allows {allowed}); nothing registered."
            + where())


def _on_phone(runner: AdbRunner | None, r: Request, files: Sequence[File], predicted_ms: float) -> Phone | None:
    """The file the phone's tool runs, timed on the phone in one sustained run; nothing without `phone.serial`."""
    if runner is None:
        return None
    file = next(f for f in files if f.backend == runner.backend)
    if not file.path:
        raise UserError(f"phone.tool: {runner.tool} runs {file.backend} files, and this trial has none "
                        f"({file.refused}); use another phone.tool; nothing registered")
    s = runner.sustained(Path(file.path), r.phone["seconds"], r.phone["parts"])
    return Phone(runner.settings()["device_model"], file.backend, s.first.median_ms, s.last.median_ms, s.slowdown,
                 s.peak_memory_mb, s.first.median_ms / predicted_ms)


def _run(cfg: dict[str, Any], checked: Request | None) -> None:
    p = promote(checked or Request.of(cfg))
    verb = "registered" if p.new_version else "already registered as"
    print(f"trial {p.trial} of {p.study}: {verb} {p.model_name} version {p.version}, alias {p.alias!r} (trial: "
          f"test accuracy {p.test_accuracy:.2f}%, predicted latency on target {p.predicted_latency_ms:.3f} ms, "
          f"size_kb {p.size_kb:.1f})\n  load: mlflow.pyfunc.load_model('models:/{p.model_name}@{p.alias}')")
    for f in p.files:
        if f.path is None:
            print(f"  no {f.backend} file: {f.refused}")
            continue
        host = "" if f.host_latency_ms is None else f", host latency {f.host_latency_ms:.3f} ms"
        print(f"  {f.backend}: {f.test_accuracy:.2f}% (agrees with the trial's network on {f.agreement:.2f}% of test "
              f"images){host}, {f.kb:.1f} KB: {f.path}")
    if p.phone:
        memory = "" if p.phone.peak_memory_mb is None else f", peak memory {p.phone.peak_memory_mb:.1f} MB"
        print(f"  on {p.phone.device} ({p.phone.backend}): {p.phone.latency_ms:.3f} ms at first, "
              f"{p.phone.sustained_latency_ms:.3f} ms at the end of the sustained run ({p.phone.slowdown:.2f}x)"
              f"{memory}; measured/predicted {p.phone.measured_over_predicted:.2f}")
    print(json.dumps(p.to_json()))


def main() -> None:
    command(CONFIG_NAME, Request.of, _run)


if __name__ == "__main__":
    main()
