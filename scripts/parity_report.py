"""Promote every front trial of two studies and measure how closely each exported file computes the trial's
network: top-1 agreement with it and the test-accuracy difference, on the whole test split. Writes the README
section between <!-- results:parity --> and <!-- /results:parity -->.

    .venv/bin/python scripts/parity_report.py            # run both studies, promote their fronts, rewrite README
    .venv/bin/python scripts/parity_report.py --no-run   # only re-read the last run's promotions

The studies run as a user runs them: the default study (`python -m search target=snapdragon665`) and a
digits study; each in a scratch folder under outputs/parity-report.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from readme_results import machine, write_readme

from search import pareto, storage
from search.promotion import Promotion

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "outputs" / "parity-report"
MARK = "parity"
STUDIES = {"default": [], "digits": ["data=digits", "n_trials=40"]}
GOALS = {"agreement": 99.5, "gap": 0.3}  # issue: top-1 agreement >= 99.5 %, |accuracy difference| <= 0.3 points


def common(name: str) -> list[str]:
    folder = FOLDER / name
    return [f"study.name=parity-{name}", f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
            f"cache_dir={FOLDER / 'cache'}", f"study.dir={folder / 'study'}"]


def front(name: str) -> list[int]:
    study = storage.load(FOLDER / name / "study", f"parity-{name}")
    return sorted(p.trial for p in pareto.front(pareto.points(study.trials, ["accuracy", "latency_ms"])))


def run(name: str) -> list[dict]:
    folder = FOLDER / name
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "search", "target=snapdragon665", *STUDIES[name], *common(name)],
                   check=True, cwd=folder)
    promoted = []
    for trial in front(name):  # with the default gate, as a user promotes
        done = subprocess.run([sys.executable, "-m", "search.promote", f"trial={trial}", *common(name)], cwd=folder,
                              capture_output=True, text=True)
        last = (done.stdout if done.returncode == 0 else done.stderr).strip().splitlines()[-1]
        if done.returncode != 0 and not last.startswith("error: parity:"):
            raise SystemExit(f"promote trial {trial} of {name}: {last}")
        promoted.append(json.loads(last) if done.returncode == 0 else {"trial": trial, "refused": last})
    (folder / "promoted.json").write_text(json.dumps(promoted, indent=1))
    return promoted


def section(results: dict[str, list[dict]]) -> str:
    refused = [(name, p) for name, promoted in results.items() for p in promoted if "refused" in p]
    rows = [(name, Promotion.from_json(p)) for name, promoted in results.items() for p in promoted
            if "refused" not in p]
    worst_agreement = min(rows, key=lambda r: r[1].file("onnx").agreement)
    worst_gap = max(rows, key=lambda r: abs(r[1].file("onnx").test_accuracy - r[1].test_accuracy))
    lines = [f"Measured by `scripts/parity_report.py` on {machine()}: every front trial of "
             f"{' and of '.join(f'the {name} study' for name in results)} promoted with the default gate "
             f"(`python -m search.promote trial=N`), its ONNX file run by onnxruntime and its "
             f"`.tflite` file by LiteRT on the whole test split against the trial's torch network "
             f"({len(rows) + len(refused)} trials; gate: {len(rows)} registered, {len(refused)} refused).",
             "",
             "| study | trial | test accuracy, torch | as ONNX | difference | top-1 agreement | largest logit diff "
             "| as .tflite | .tflite agreement | gate |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, p in rows:
        onnx, tflite = p.file("onnx"), p.file("litert")
        cells = f"{tflite.test_accuracy:.2f} | {tflite.agreement:.2f}%" if tflite.path else "no file | -"
        lines.append(f"| {name} | {p.trial} | {p.test_accuracy:.2f} | {onnx.test_accuracy:.2f} | "
                     f"{onnx.test_accuracy - p.test_accuracy:+.2f} | {onnx.agreement:.2f}% | {onnx.max_logit_diff:.3g} "
                     f"| {cells} | registered |")
    for name, p in refused:
        lines.append(f"| {name} | {p['trial']} | | | | | | | | refused: {p['refused'].removeprefix('error: ')} |")
    gap = abs(worst_gap[1].file("onnx").test_accuracy - worst_gap[1].test_accuracy)
    agreement = worst_agreement[1].file("onnx").agreement
    lines += ["", f"Worst top-1 agreement: {agreement:.2f}% ({worst_agreement[0]} trial {worst_agreement[1].trial}; "
              f"goal >= {GOALS['agreement']}%: {'met' if agreement >= GOALS['agreement'] else 'not met'}). "
              f"Worst accuracy difference: {gap:.2f} points ({worst_gap[0]} trial {worst_gap[1].trial}; goal <= "
              f"{GOALS['gap']}: {'met' if gap <= GOALS['gap'] else 'not met'}). The goals are the ONNX file's, whose integer "
              "kernels add an int32 bias the network does not round; the `.tflite` file's round their requantization "
              "differently too (see the LiteRT section)."]
    files = [p for _, p in rows if p.file("litert").path]
    if files:
        worst = min(files, key=lambda p: p.file("litert").agreement)
        lines[-1] += f" Worst .tflite agreement: {worst.file('litert').agreement:.2f}% (trial {worst.trial})."
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-run", action="store_true", help="re-read the last run's promotions")
    parser.add_argument("--only", choices=list(STUDIES), action="append", help="this study only (repeatable)")
    args = parser.parse_args()
    results = {name: json.loads((FOLDER / name / "promoted.json").read_text()) if args.no_run else run(name)
               for name in args.only or STUDIES}
    text = section(results)
    print(text)
    write_readme(text, ROOT / "README.md", MARK)


if __name__ == "__main__":
    main()
