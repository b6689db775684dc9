"""Run the default study from scratch, time it, and write its measured results into the README.

    .venv/bin/python scripts/search_report.py            # run, then rewrite README's results
    .venv/bin/python scripts/search_report.py --no-run   # only re-read the last run's study
    .venv/bin/python scripts/search_report.py --folder outputs/report-depth --mark search-depth \
        space.depths=[1] supernet.epochs=8                # the study with elastic depth: README's search-depth

The study runs as a user runs it (`python -m search target=snapdragon665`), in a scratch study
name and a fresh cache, so the time includes fetching the data set and training the supernet. The knee, the
fastest trial within 1 point of float and both baselines are promoted as a user would (`--promote` does it again
for the last run's study); their ONNX files (onnxruntime) and `.tflite` files
(XNNPACK) are then timed on this CPU, each kind together in one run, so the speed-ups are ratios
measured in one run. And the study's networks are predicted again under the lowest and the highest
int8 speed-up the target's evidence spans (`speedup_range`), to show how the front and knee move.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import copy
import dataclasses

import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState
from readme_results import machine, write_readme

from search import data as datasets
from search import pareto, storage
from search.promotion import Promotion
from search.study_config import recorded
from search.tracking import Tracker
from search.runners.host import HostRunner
from search.runners.litert import LiteRTRunner

ROOT = Path(__file__).resolve().parent.parent
STUDY = "report-default"
MARK = "search"  # README section between <!-- results:search --> and <!-- /results:search -->
TIMING = {"passes": 200, "min_seconds": 4.0}  # per file: a few files, so each is timed long


def run_study(folder: Path, overrides: list[str]) -> float:
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "search", "target=snapdragon665", f"study.name={STUDY}",
                    f"tracking.uri=sqlite:///{folder / 'mlflow.db'}", f"cache_dir={folder / 'cache'}",
                    f"study.dir={folder / STUDY}", *overrides], check=True, cwd=folder)
    minutes = (time.perf_counter() - started) / 60
    (folder / "wall.json").write_text(json.dumps({"minutes": minutes, "overrides": overrides}))
    return minutes


def promote_all(folder: Path) -> dict[str, dict]:
    """Promote the front's knee, the fastest trial within 1 point of float (on validation, by predicted latency) and
    both baselines as a user would, then time their ONNX files together on
    onnxruntime and their `.tflite` files together on XNNPACK (interleaved: `TIMING` passes, each shuffled)."""
    done = load(folder).get_trials(states=(TrialState.COMPLETE,))
    baselines = {t.user_attrs["baseline"]: t.number for t in done if t.user_attrs.get("baseline")}
    out = {}
    picks = (("knee", ["pick=knee"]), ("fastest", ["pick=fastest", "max_drop=1", "alias=fastest"]))
    for label, overrides in (*picks, *((k, [f"trial={n}", f"alias={k}"]) for k, n in baselines.items())):
        done = subprocess.run([sys.executable, "-m", "search.promote", f"study.name={STUDY}",
                               f"tracking.uri=sqlite:///{folder / 'mlflow.db'}", f"cache_dir={folder / 'cache'}",
                               f"study.dir={folder / STUDY}", *overrides], check=True, cwd=folder,
                              capture_output=True, text=True)
        out[label] = json.loads(done.stdout.strip().splitlines()[-1])
    files = {k: Promotion.from_json(p).files for k, p in out.items()}
    onnx = {k: Path(f.path) for k, fs in files.items() for f in fs if f.backend == "onnx"}
    tflite = {k: Path(f.path) for k, fs in files.items() for f in fs if f.backend == "litert" and f.path}
    timings = {"onnxruntime": HostRunner(seed=0, **TIMING).measure(onnx, onnx["float"])[0]}
    if "float" in tflite:
        timings["xnnpack"] = LiteRTRunner(seed=0, **TIMING).measure(tflite, tflite["float"])[0]
    for label, p in out.items():
        p["measured_ms"] = {runtime: t[label].median_ms for runtime, t in timings.items() if label in t}
    (folder / "promoted.json").write_text(json.dumps(out, indent=1))
    return out


def read_promoted(folder: Path) -> dict[str, tuple[Promotion, dict[str, float]]]:
    """Each pick's promotion (as promote printed it, in either format) and its files' timings on this CPU."""
    saved = json.loads((folder / "promoted.json").read_text())
    return {k: (Promotion.from_json({key: v for key, v in p.items() if key != "measured_ms"}), p["measured_ms"])
            for k, p in saved.items()}


def promoted_table(folder: Path) -> list[str]:
    promoted = read_promoted(folder)
    base, float_ms = promoted["float"][1], promoted["float"][0].predicted_latency_ms

    def row(label: str, picked: tuple[Promotion, dict[str, float]]) -> str:
        p, ms = picked
        onnx, tflite = p.file("onnx"), p.file("litert")
        cells = [f"{ms[r]:.4f} | {base[r] / ms[r]:.2f}x" if r in ms else "no file | -" for r in ("onnxruntime", "xnnpack")]
        return (f"| {label} | {p.trial} | {p.test_accuracy:.2f} | {onnx.test_accuracy:.2f} "
                f"| {tflite.test_accuracy if tflite.path else float('nan'):.2f} | {onnx.kb:.1f} "
                f"| {tflite.kb or float('nan'):.1f} | {cells[0]} | {cells[1]} | {p.predicted_latency_ms:.3f} "
                f"| {float_ms / p.predicted_latency_ms:.2f}x (predicted) |")

    return ["", "Promoted with `python -m search.promote` (both files exported and checked on the test split), then "
            f"timed on this CPU: the {len(promoted)} ONNX files together on onnxruntime, the {len(promoted)} `.tflite` "
            "files together on "
            f"XNNPACK (batch 1, 1 thread, interleaved: {TIMING['passes']} passes, each in a new shuffled order, median). "
            "The last columns are the snapdragon665 "
            "prediction, not a measurement:", "",
            "| network | trial | test accuracy % (trial) | ONNX % | .tflite % | ONNX KB | .tflite KB "
            "| onnxruntime ms | speed-up (measured) | XNNPACK ms | speed-up (measured) "
            "| snapdragon665 ms (predicted) | speed-up (predicted) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            row("float full-width baseline", promoted["float"]),
            *([row("uniform 8-bit baseline", promoted["int8"])] if "int8" in promoted else []),
            row("knee of the front (`pick=knee`)", promoted["knee"]),
            *([row("fastest within 1.0 point of float (`pick=fastest max_drop=1`)", promoted["fastest"])]
              if "fastest" in promoted else [])]


def fastest_within_a_point(folder: Path, done: list[optuna.trial.FrozenTrial]) -> list[str]:
    """Issue 15's question, asked again of a space with elastic depth: is the fastest network within 1 point of float
    (on validation, by predicted latency) measured at least 2x faster than float on XNNPACK?"""
    promoted = read_promoted(folder)
    if "xnnpack" not in promoted.get("fastest", (None, {}))[1]:
        return []
    (p, ms), (base, base_ms) = promoted["fastest"], promoted["float"]
    t = next(t for t in done if t.number == p.trial)
    drop = next(t for t in done if t.number == base.trial).user_attrs["accuracy"] - t.user_attrs["accuracy"]
    speedup = base_ms["xnnpack"] / ms["xnnpack"]
    depths = ", ".join(f"{k.removeprefix('depth.')} {v}" for k, v in t.params.items() if k.startswith("depth."))
    return ["", f"The fastest network within 1.0 point of float on validation (`pick=fastest max_drop=1`, by predicted "
            f"latency) is trial {t.number}, {drop:.2f} points below float on validation: measured **{speedup:.2f}x** "
            f"faster than float on XNNPACK on this CPU (goal: at least 2x; {'met' if speedup >= 2 else 'not met'}). "
            f"Blocks it keeps of its elastic stages: {depths or 'all (the space has no elastic depth)'}."]


def sensitivity(folder: Path, done: list[optuna.trial.FrozenTrial]) -> list[str]:
    """The study's networks predicted again with each int8 speed-up of the target's evidence: the front and knee
    those factors give among the networks this study evaluated (a study run under another factor would also
    propose other networks)."""
    config = recorded(Tracker(f"sqlite:///{folder / 'mlflow.db'}", STUDY, create=False).study_config())  # as it ran
    target, objectives = config.target, config.objectives
    d = datasets.load(config.data, config.seed, str(folder / "cache"))
    space = config.build_space(d.input_shape, d.num_classes)
    fitted = config.predictor()
    layers = {t.number: space.layers(space.sample(optuna.trial.FixedTrial(t.params))) for t in done}
    lo, hi = target["speedup_range"]["int8"]
    used = target["speedups"]["int8"]
    float_ = next(t.number for t in done if t.user_attrs.get("baseline") == "float")
    rows = []
    for label, factor in (("interval's low end", lo), ("fitted (used by the search)", used), ("interval's high end", hi)):
        predictor = dataclasses.replace(fitted, speedups={**fitted.speedups, "int8": factor})
        trials = []
        for t in done:
            t = copy.deepcopy(t)
            t.user_attrs["latency_ms"] = predictor.predict(layers[t.number])
            trials.append(t)
        pts = pareto.points(trials, objectives)
        knee = pareto.knee(pts, objectives)
        base = next(p for p in pts if p.trial == float_)
        int8 = sum(x.bits <= 8 for x in layers[knee.trial]) / len(layers[knee.trial])
        rows.append(f"| {label} | {factor:.2f}x | {len(pareto.front(pts))} | {knee.trial} | {knee.values['accuracy']:.2f} "
                    f"| {knee.values['latency_ms']:.3f} | {base.values['latency_ms'] / knee.values['latency_ms']:.2f}x "
                    f"| {int8:.0%} |")
    return ["", f"How the front and knee depend on the int8 speed-up (`conf/target/snapdragon665.yaml`: "
            f"{used}x fitted from fp32/int8 pairs on A73-class cores, 90% interval {lo}x to {hi}x). The same "
            f"{len(done)} networks, predicted again with each factor (a study run under another factor would also "
            "propose other networks); all latencies here are predicted:", "",
            "| int8 speed-up | factor | front size | knee trial | knee val accuracy % | knee ms (predicted) "
            "| over float (predicted) | knee layers at int8 |", "|---|---|---|---|---|---|---|---|", *rows]


def load(folder: Path) -> optuna.Study:
    return storage.load(folder / STUDY, STUDY)


def report(folder: Path) -> str:
    wall = json.loads((folder / "wall.json").read_text())
    done = load(folder).get_trials(states=(TrialState.COMPLETE,))
    by_baseline = {t.user_attrs.get("baseline"): t for t in done}
    float_, int8 = by_baseline["float"], by_baseline.get("int8")
    front = {p.trial for p in pareto.front(pareto.points(done, ["accuracy", "latency_ms"]))}  # the study's objectives
    close = [t for t in done if t.number in front and t.user_attrs["accuracy"] >= float_.user_attrs["accuracy"] - 1.0]
    pick = min(close, key=lambda t: t.user_attrs["size_kb"])
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(STUDY).experiment_id
    tags = client.search_runs([experiment], "tags.`search.role` = 'study'")[0].data.tags

    def row(label: str, t: optuna.trial.FrozenTrial) -> str:
        a = t.user_attrs
        ratio = float_.user_attrs["size_kb"] / a["size_kb"]
        return (f"| {label} | {t.number} | {a['accuracy']:.2f} | {a['test_accuracy']:.2f} | {a['size_kb']:.1f} "
                f"| {ratio:.1f}x | {a['latency_ms']:.3f} | {a['macs'] / 1e6:.2f} |")

    config = recorded(Tracker(f"sqlite:///{folder / 'mlflow.db'}", STUDY, create=False).study_config())  # as it ran
    depths = config.space.get("depths") or []
    lines = [
        f"Default study (`{' '.join(['python -m search target=snapdragon665', *wall['overrides']])}`; "
        f"elastic depth: {f'a stage keeps {depths} of its first blocks or all' if depths else 'none'}, supernet "
        f"{config.supernet['epochs']} epochs): {len(done)} complete trials in **{wall['minutes']:.1f} minutes** from a "
        f"cold cache (data set fetch and supernet training included), on {machine()}.",
        "",
        "| network | trial | val accuracy % | test accuracy % | size KB | smaller | predicted latency ms | MMACs |",
        "|---|---|---|---|---|---|---|---|",
        row("float full-width baseline", float_),
        *([row("uniform 8-bit baseline", int8)] if int8 else []),
        row("smallest front point within 1.0 point of float", pick),
        *promoted_table(folder),
        *fastest_within_a_point(folder, done),
        *sensitivity(folder, done),
        "",
        f"Pareto front: {len(front)} trials. The picked point is "
        f"{float_.user_attrs['accuracy'] - pick.user_attrs['accuracy']:.2f} points below the float baseline on "
        f"validation and {float_.user_attrs['size_kb'] / pick.user_attrs['size_kb']:.1f}x smaller. Latency is predicted by "
        f"`{tags['latency.predictor']}`, {tags['latency.source']}. "
        f"**{sum(bool(t.user_attrs.get('latency_extrapolated')) for t in done)} of {len(done)} trials lie outside the "
        f"networks it was calibrated on** (MLflow tag `latency.extrapolated`; the phone section below says where).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-run", action="store_true", help="report the last run without running again")
    parser.add_argument("--promote", action="store_true", help="with --no-run: promote and time the last run's picks "
                        "again (all files timed together, so their ratios are one run's)")
    parser.add_argument("--folder", type=Path, default=ROOT / "outputs" / "report")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--mark", default=MARK, help="the README section to write (results:MARK)")
    parser.add_argument("overrides", nargs="*", help="extra overrides for the study (default: none)")
    args = parser.parse_args()
    args.folder = args.folder.resolve()  # the study runs with the folder as its working directory
    if not args.no_run:
        if (args.folder / STUDY).exists():
            raise SystemExit(f"{args.folder / STUDY} exists: remove {args.folder} to measure from scratch")
        run_study(args.folder, args.overrides)
    if not args.no_run or args.promote:
        promote_all(args.folder)
    section = report(args.folder)
    print(section)
    write_readme(section, args.readme, args.mark)


if __name__ == "__main__":
    main()
