"""Run the default study from scratch, time it, and write its measured results into the README.

    .venv/bin/python scripts/search_report.py            # run, then rewrite README's results
    .venv/bin/python scripts/search_report.py --no-run   # only re-read the last run's study

The study runs as a user runs it (`python -m search target=snapdragon665`), in a scratch study
name and a fresh cache, so the time includes fetching MNIST and training the supernet.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
from mlflow import MlflowClient
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState
from readme_results import machine, write_readme

from search import pareto

ROOT = Path(__file__).resolve().parent.parent
STUDY = "report-default"
MARK = "search"  # README section between <!-- results:search --> and <!-- /results:search -->


def run_study(folder: Path, overrides: list[str]) -> float:
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "search", "target=snapdragon665", f"study.name={STUDY}",
                    f"tracking.uri=sqlite:///{folder / 'mlflow.db'}", f"cache_dir={folder / 'cache'}",
                    f"study.dir={folder / STUDY}", *overrides], check=True, cwd=folder)
    minutes = (time.perf_counter() - started) / 60
    (folder / "wall.json").write_text(json.dumps({"minutes": minutes, "overrides": overrides}))
    return minutes


def promote_both(folder: Path) -> list[dict]:
    """Promote the front's knee and the float full-width baseline as a user would, each measured on this host."""
    out = []
    for overrides in (["pick=knee"], ["trial=0", "alias=baseline"]):  # trial 0 is the float baseline
        done = subprocess.run([sys.executable, "-m", "search.promote", f"study.name={STUDY}",
                               f"tracking.uri=sqlite:///{folder / 'mlflow.db'}", f"cache_dir={folder / 'cache'}",
                               f"study.dir={folder / STUDY}", *overrides], check=True, cwd=folder,
                              capture_output=True, text=True)
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
    (folder / "promoted.json").write_text(json.dumps(out, indent=1))
    return out


def promoted_table(folder: Path) -> list[str]:
    knee, base = json.loads((folder / "promoted.json").read_text())

    def row(label: str, p: dict) -> str:
        return (f"| {label} | {p['trial']} | {p['test_accuracy']:.2f} | {p['onnx_test_accuracy']:.2f} "
                f"| {p['onnx_kb']:.1f} | {p['size_kb']:.1f} | {p['host_latency_ms']:.3f} "
                f"| {base['host_latency_ms'] / p['host_latency_ms']:.2f}x | {p['predicted_latency_ms']:.3f} |")

    return ["", "Promoted with `python -m search.promote` (ONNX file exported, checked on the test split with onnxruntime, "
            "timed on this host: batch 1, 1 thread, median):", "",
            "| network | trial | test accuracy % (trial) | test accuracy % (ONNX) | file KB | size_kb | host latency ms "
            "| host speed-up | predicted snapdragon665 latency ms |",
            "|---|---|---|---|---|---|---|---|---|",
            row("float full-width baseline", base), row("knee of the front (`pick=knee`)", knee)]


def report(folder: Path) -> str:
    wall = json.loads((folder / "wall.json").read_text())
    storage = JournalStorage(JournalFileBackend(str(folder / STUDY / "optuna.journal")))
    study = optuna.load_study(study_name=STUDY, storage=storage)
    done = study.get_trials(states=(TrialState.COMPLETE,))
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

    lines = [
        f"Default study (`python -m search target=snapdragon665`{' ' + ' '.join(wall['overrides']) if wall['overrides'] else ''}): "
        f"{len(done)} complete trials in **{wall['minutes']:.1f} minutes** from a cold cache "
        f"(MNIST fetch and supernet training included), on {machine()}.",
        "",
        "| network | trial | val accuracy % | test accuracy % | size KB | smaller | predicted latency ms | MMACs |",
        "|---|---|---|---|---|---|---|---|",
        row("float full-width baseline", float_),
        *([row("uniform 8-bit baseline", int8)] if int8 else []),
        row("smallest front point within 1.0 point of float", pick),
        *promoted_table(folder),
        "",
        f"Pareto front: {len(front)} trials. The picked point is "
        f"{float_.user_attrs['accuracy'] - pick.user_attrs['accuracy']:.2f} points below the float baseline on "
        f"validation and {float_.user_attrs['size_kb'] / pick.user_attrs['size_kb']:.1f}x smaller. Latency is predicted by "
        f"`{tags['latency.predictor']}`, {tags['latency.source']}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-run", action="store_true", help="report the last run without running again")
    parser.add_argument("--folder", type=Path, default=ROOT / "outputs" / "report")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("overrides", nargs="*", help="extra overrides for the study (default: none)")
    args = parser.parse_args()
    if not args.no_run:
        if (args.folder / STUDY).exists():
            raise SystemExit(f"{args.folder / STUDY} exists: remove {args.folder} to measure from scratch")
        run_study(args.folder, args.overrides)
        promote_both(args.folder)
    section = report(args.folder)
    print(section)
    write_readme(section, args.readme, MARK)


if __name__ == "__main__":
    main()
