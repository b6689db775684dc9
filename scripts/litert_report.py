"""Calibrate `host-litert`, run a study on it (the default data), promote its knee and both baselines, time their `.tflite`
files on XNNPACK together with what a width multiplier alone gives, and write the measured results into the README.

    .venv/bin/python scripts/litert_report.py            # calibrate, search, promote, time, rewrite README
                                                         # (a calibration or study already in the folder is kept)
    .venv/bin/python scripts/litert_report.py --no-run   # only re-read the last run

Everything runs as a user runs it (`python -m search.calibrate target=host-litert`, `python -m search
target=host-litert`, `python -m search.promote`), in a scratch folder with a fresh cache. The promoted files are timed
in one run, interleaved (`TIMING` passes, each in a new shuffled order), so their ratios are what this script reports.
The width multipliers are not trials: they are evaluated beside the study, from its supernet, as a trial would be.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState
from readme_results import evaluation, machine, write_readme

from search import storage
from search.promotion import File, Promotion
from search.runners.litert import LiteRTRunner

ROOT = Path(__file__).resolve().parent.parent
STUDY = "report-litert"
MARK = "litert"  # README section between <!-- results:litert --> and <!-- /results:litert -->
TIMING = {"passes": 200, "min_seconds": 4.0}  # per file: a few files, so each is timed long
DATA: list[str] = []  # the data set this report's study searches (none: the default, as a user runs it)


def common(folder: Path) -> list[str]:
    return [f"tracking.uri=sqlite:///{folder / 'mlflow.db'}", f"cache_dir={folder / 'cache'}"]


def timed(command: list[str], folder: Path) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", *command, *common(folder)], check=True, cwd=folder,
                          stdout=subprocess.PIPE, text=True)
    return (time.perf_counter() - started) / 60, done.stdout.strip().splitlines()[-1]


def run(folder: Path, networks: int) -> None:
    """Each step once: a calibration or a study already in `folder` is kept (a stopped run resumes); the promotions
    and the timing are done again, so the files are always timed together."""
    folder.mkdir(parents=True, exist_ok=True)
    saved = folder / "report.json"
    r = json.loads(saved.read_text()) if saved.exists() else {}
    study = [f"study.name={STUDY}", f"study.dir={folder / STUDY}"]
    if "calibration" not in r:
        minutes, calibration = timed(["search.calibrate", "target=host-litert", f"networks={networks}"], folder)
        r |= {"calibrate_minutes": minutes, "calibration": json.loads(calibration), "networks": networks}
        saved.write_text(json.dumps(r, indent=1))
    if "search_minutes" not in r:
        r["search_minutes"] = timed(["search", "target=host-litert", *DATA, *study], folder)[0]
        saved.write_text(json.dumps(r, indent=1))
    done = load(folder).get_trials(states=(TrialState.COMPLETE,))
    picks = {"knee": ["pick=knee"], **{t.user_attrs["baseline"]: [f"trial={t.number}", f"alias={t.user_attrs['baseline']}"]
                                        for t in done if t.user_attrs.get("baseline")},
             "smallest": ["pick=smallest", "max_drop=1", "alias=smallest"],
             "fastest": ["pick=fastest", "max_drop=1", "alias=fastest"]}
    promoted = {label: json.loads(timed(["search.promote", *study, *overrides], folder)[1])
                for label, overrides in picks.items()}
    scaled = width_ladder(folder, study)
    files = {k: Path(row.file.path) for k, row in rows(promoted, scaled).items()}
    timings, references = LiteRTRunner(seed=0, **TIMING).measure(files, files["float"])
    saved.write_text(json.dumps(r | {"promoted": promoted, "scaled": scaled,
                                     "xnnpack_ms": {k: t.median_ms for k, t in timings.items()},
                                     "reference_ms": [t.median_ms for t in references]}, indent=1))


def width_ladder(folder: Path, study: list[str]) -> dict[str, dict]:
    """What a width multiplier alone gives, the usual way to make a MobileNet faster: the float baseline with every
    width at each smaller multiplier of the space, evaluated as a trial is (on a worker, from the study's supernet, the
    float baseline's fine-tuning seed; not a trial of the study) and exported as `.tflite` the way promote does."""
    from search import config, parity, promote
    from search.backends import litert
    from search.study import trial_seed
    from search.workers import Workers

    ev = evaluation(config.resolve(config.compose(["target=host-litert", *DATA, *study, *common(folder)])))
    d, space, predictor = ev.data, ev.space, ev.config.predictor()
    base = space.baselines()["float"]
    ladder = {w: {k: w if k.startswith("width.") else v for k, v in base.items()}
              for w in ev.config.space["widths"] if w < 1}
    candidates = {w: space.sample(optuna.trial.FixedTrial(p)) for w, p in ladder.items()}
    with Workers(None, None, 1, 0) as workers:
        inputs = ev.inputs(workers)
        seed = trial_seed(ev.config.seed, list(space.baselines()).index("float"))
        refs = {w: inputs.submit(workers, c, seed) for w, c in candidates.items()}
        evaluated = {w: workers.result(ref)[0] for w, ref in refs.items()}
    x_test = parity.inputs(d.test, d.mean, d.std)
    out = {}
    for w, (metrics, state) in evaluated.items():
        net, shape = promote.network(ev.config, d, ladder[w], state)
        path = litert.export(net, shape, folder / "scaled" / f"width-{w}.tflite")
        checked = parity.compare(litert.outputs(path, x_test), parity.torch_logits(net, x_test), d.test.y)
        file = File("litert", str(path), path.stat().st_size / 1024, checked.accuracy, checked.agreement,
                    checked.max_logit_diff)
        out[f"width-{w}"] = {"width": w, "accuracy": metrics["accuracy"], "test_accuracy": metrics["test_accuracy"],
                             "file": dataclasses.asdict(file),
                             "predicted_latency_ms": predictor.predict(space.layers(candidates[w]))}
    return out


@dataclasses.dataclass(frozen=True)
class Row:
    """One timed `.tflite` file: a promoted trial's, or a width multiplier's (no trial)."""

    trial: int | str
    test_accuracy: float  # the network's, in torch
    file: File
    predicted_ms: float


def rows(promoted: dict, scaled: dict) -> dict[str, Row]:
    """Promote's JSON per pick and the width ladder's records, as rows."""
    out = {}
    for key, p in promoted.items():
        p = Promotion.from_json(p)
        out[key] = Row(p.trial, p.test_accuracy, p.file("litert"), p.predicted_latency_ms)
    return out | {key: Row("none", s["test_accuracy"], File(**s["file"]), s["predicted_latency_ms"])
                  for key, s in scaled.items()}


def load(folder: Path) -> optuna.Study:
    return storage.load(folder / STUDY, STUDY)


def report(folder: Path) -> str:
    r = json.loads((folder / "report.json").read_text())
    cal, promoted, ms = r["calibration"], r["promoted"], r["xnnpack_ms"]
    scaled = r.get("scaled", {})
    table = rows(promoted, scaled)
    done = load(folder).get_trials(states=(TrialState.COMPLETE,))
    float_ = next(t for t in done if t.user_attrs.get("baseline") == "float")
    small = next(t for t in done if t.number == table["smallest"].trial)
    q1, median, q3 = np.percentile(r["reference_ms"], [25, 50, 75])
    spread = (q3 - q1) / median
    predicted_float = table["float"].predicted_ms
    float_file = table["float"].file

    def row(label: str, key: str) -> str:
        p = table[key]
        return (f"| {label} | {p.trial} | {p.test_accuracy:.2f} | {p.file.test_accuracy:.2f} "
                f"| {p.file.agreement:.2f} | {p.file.kb:.1f} | {ms[key]:.4f} | {ms['float'] / ms[key]:.2f}x "
                f"| {p.predicted_ms:.4f} | {predicted_float / p.predicted_ms:.2f}x (predicted) "
                f"| {ms[key] / p.predicted_ms:.2f} |")

    return "\n".join([
        f"`python -m search.calibrate target=host-litert networks={r['networks']}`: {r['calibrate_minutes']:.1f} minutes; "
        f"held-out networks (n={cal['n']}): {cal['within_10pct']:.0%} within ±10%, Spearman {cal['spearman']:.3f}, "
        f"MAPE {cal['mape']:.1%}, noise floor {cal['noise_floor']:.1%}.",
        "",
        f"`{' '.join(['python -m search target=host-litert', *DATA])}` (bits narrowed to [8, 32]): {len(done)} complete trials in "
        f"{r['search_minutes']:.1f} minutes, on {machine()}. Promoted with `python -m search.promote`, then the "
        f"{len(promoted) + len(scaled)} `.tflite` files timed together on XNNPACK (1 thread, batch 1, interleaved: {TIMING['passes']} "
        f"passes, each in a new shuffled order, median; the machine's speed varied by {spread:.0%} between passes, "
        "alike for every file; between the calibration and this timing it can differ more, which the measured / "
        "predicted column carries and the speed-ups, ratios within one run, do not):",
        "",
        "| network | trial | test accuracy % (trial) | test accuracy % (.tflite) | top-1 agreement % | file KB "
        "| XNNPACK ms (measured) | speed-up over float (measured) | predicted ms | speed-up over float (predicted) "
        "| measured / predicted |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        row("float full-width baseline", "float"),
        *([row("uniform 8-bit baseline", "int8")] if "int8" in promoted else []),
        row("knee of the front (`pick=knee`)", "knee"),
        *([row("smallest front point within 1 point of float", "smallest")] if "smallest" in promoted else []),
        *([row("fastest within 1 point of float (`pick=fastest`)", "fastest")] if "fastest" in promoted else []),
        *[row(f"every width x{p['width']}, all float (not searched)", key) for key, p in scaled.items()],
        "",
        f"The knee is the front's balanced point, not its fastest: measured {ms['float'] / ms['knee']:.2f}x faster "
        f"than float ({'meets' if ms['float'] / ms['knee'] >= 2 else 'short of'} the 2x goal), "
        f"{float_file.test_accuracy - table['knee'].file.test_accuracy:.2f} points below it in "
        "test accuracy. "
        f"The smallest trial within 1 point of float on validation (`pick=smallest max_drop=1`) is trial "
        f"{small.number}: {small.user_attrs['accuracy']:.2f}% (float {float_.user_attrs['accuracy']:.2f}%), size_kb "
        f"{small.user_attrs['size_kb']:.1f}, its `.tflite` file {table['smallest'].file.kb:.1f} KB."
        + (f" The fastest network within 1 point of float (`pick=fastest max_drop=1`, by predicted latency) is trial "
           f"{table['fastest'].trial}: measured {ms['float'] / ms['fastest']:.2f}x faster than float, "
           f"{float_file.test_accuracy - table['fastest'].file.test_accuracy:.2f} points below "
           "it in test accuracy." if "fastest" in promoted else "")
        + ("" if not scaled else " The last rows are what a width multiplier alone gives, the usual way to make a "
           "MobileNet faster (the float baseline at each smaller width of the space, evaluated as a trial is from the "
           "same supernet and exported the same way, not a trial of the study): "
           + "; ".join(f"x{p['width']} runs {ms['float'] / ms[key]:.2f}x faster than float, "
                       f"{float_file.test_accuracy - table[key].file.test_accuracy:.2f} points below it"
                       for key, p in scaled.items()) + "."),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-run", action="store_true", help="report the last run without running again")
    parser.add_argument("--folder", type=Path, default=ROOT / "outputs" / "litert-report")
    parser.add_argument("--networks", type=int, default=100, help="calibration networks")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args()
    if not args.no_run:
        run(args.folder.resolve(), args.networks)
    section = report(args.folder)
    print(section)
    write_readme(section, args.readme, MARK)


if __name__ == "__main__":
    main()
