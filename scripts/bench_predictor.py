"""Latency-predictor accuracy against the number of calibration measurements, beside two baselines.

    .venv/bin/python scripts/bench_predictor.py            # full run (minutes), rewrites README's section
    .venv/bin/python scripts/bench_predictor.py --quick    # A50 only up to 100 rows, 2 splits (seconds)

For each measurement file the held-out rows are fixed (one seeded draw); for each calibration size
the fit rows are drawn at random from the rest, once per split, and the predictor
(`search.latency`, fitted as `python -m search.calibrate` fits it), a least-squares fit on MACs
alone (latency = a * MACs + b) and the 6-coefficient MACs + memory-traffic fit of
`calibration_report.py` are fitted on the same rows and scored on the held-out ones. Numbers are
means over the splits. Writes `bench_predictor.md` and `bench_predictor.png` into --out and the
table into the README between `<!-- results:predictor -->` and `<!-- /results:predictor -->`.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration_report import A50, baseline  # noqa: E402
from readme_results import machine, write_readme  # noqa: E402

from search import fitting, latency, measurements  # noqa: E402
from search.calibrate import Request  # noqa: E402
from search.config import ROOT, compose, resolve  # noqa: E402

SIZES = (10, 30, 100, 300, 1000)
QUICK_SIZES = (10, 30, 100)
MODELS = ("predictor", "MACs", "MACs+memory")
METRICS = (("mape", "MAPE", "{:.1%}"), ("within_10pct", "within ±10%", "{:.1%}"), ("spearman", "Spearman", "{:.3f}"))


@dataclass(frozen=True)
class Data:
    label: str
    layers: list
    latency_ms: np.ndarray
    kernels: dict[int, str]
    sparse_kernels: bool
    held_out: int  # rows scored, fixed for every size and split


def load(label: str, target: str, space: str, path: Path, held_out: float) -> Data:
    """A target's measurement file, read with the space and kernels its calibration uses;
    `held_out` is a number of rows, or a share of them when below 1."""
    r = Request.of(resolve(compose([f"target={target}", f"space={space}"], "calibrate")))
    space = r.build_space()
    rows = measurements.read(path, space)
    kernels = {int(k): v for k, v in r.target["kernels"].items()}
    return Data(label, [space.layers(row.candidate) for row in rows], np.array([row.latency_ms for row in rows]),
                kernels, r.target["sparse_kernels"], round(held_out * len(rows) if held_out < 1 else held_out))


def macs_only(train_layers, train_y, test_layers) -> np.ndarray:
    """Least squares on the network's MACs and a constant."""
    def row(layers):
        return [sum(layer.macs for layer in layers), 1.0]
    coef, *_ = np.linalg.lstsq(np.array([row(x) for x in train_layers]), np.asarray(train_y), rcond=None)
    return np.array([row(x) for x in test_layers]) @ coef


def predict(model: str, data: Data, fit_rows: np.ndarray, test_rows: np.ndarray) -> np.ndarray:
    train, y, test = [data.layers[i] for i in fit_rows], data.latency_ms[fit_rows], [data.layers[i] for i in test_rows]
    if model == "MACs":
        return macs_only(train, y, test)
    if model == "MACs+memory":
        return baseline(train, y, test)
    p = latency.Predictor("bench", data.kernels, data.sparse_kernels,
                          fitting.fit(train, y, data.kernels, data.sparse_kernels))
    return np.array([p.predict(x) for x in test])


def bench(data: Data, sizes: tuple[int, ...], splits: int, seed: int = 0) -> list[dict]:
    """One result row per calibration size that fits beside the held-out rows (the largest that
    does not fit is replaced by all remaining rows, which can be drawn in one way only)."""
    order = np.random.default_rng(seed).permutation(len(data.latency_ms))
    test_rows, pool = order[:data.held_out], order[data.held_out:]
    usable = sorted({min(n, len(pool)) for n in sizes if n >= 2})
    results = []
    for n in usable:
        runs = 1 if n == len(pool) else splits
        scores = {m: [] for m in MODELS}
        for split in range(runs):
            fit_rows = np.random.default_rng([seed, n, split]).choice(pool, n, replace=False)
            for m in MODELS:
                r = latency.Report.of(predict(m, data, fit_rows, test_rows), data.latency_ms[test_rows])
                scores[m].append([getattr(r, key) for key, *_ in METRICS])
        results.append({"n": n, "splits": runs, **{m: np.nanmean(s, axis=0) for m, s in scores.items()}})
        print(f"{data.label}: {n} rows done", file=sys.stderr)
    return results


def table(benched: list[tuple[Data, list[dict]]]) -> str:
    head = " | ".join(f"{m} {name}" for m in MODELS for _, name, _ in METRICS)
    lines = [f"| measurements | fitted on | splits | {head} |", "|---" * (3 + len(MODELS) * len(METRICS)) + "|"]
    for data, results in benched:
        for r in results:
            cells = " | ".join(fmt.format(v) for m in MODELS for v, (_, _, fmt) in zip(r[m], METRICS))
            lines.append(f"| {data.label} | {r['n']} rows | {r['splits']} | {cells} |")
    return "\n".join(lines)


def plot(benched: list[tuple[Data, list[dict]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(METRICS), len(benched), figsize=(5 * len(benched), 8), squeeze=False)
    for col, (data, results) in enumerate(benched):
        n = [r["n"] for r in results]
        for row, (_, name, _) in enumerate(METRICS):
            ax = axes[row][col]
            for m in MODELS:
                ax.plot(n, [r[m][row] for r in results], marker="o", label=m)
            ax.set_xscale("log")
            ax.set_ylabel(name)
            ax.grid(True, alpha=0.3)
            if row == 0:
                ax.set_title(f"{data.label}\n(scored on {data.held_out} fixed held-out rows)", fontsize=9)
            if row == len(METRICS) - 1:
                ax.set_xlabel("calibration measurements")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="A50 file only, up to 100 rows, 2 splits, 1000 held out")
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--host", type=Path, default=ROOT / ".cache" / "measurements" / "host.csv")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    sizes, splits = (QUICK_SIZES, 2) if args.quick else (SIZES, args.splits)
    benched, notes = [], []
    a50 = load("Samsung A50 (fbnet, real phone)", "snapdragon665", "fbnet", A50, 1000 if args.quick else 3000)
    if args.host.exists():
        host = load("this host (mobilenetv2, onnxruntime)", "host", "mobilenetv2", args.host, 0.2)
        benched.append((host, bench(host, sizes, splits)))
        notes.append(f"Host: {len(host.latency_ms)} measured networks, {host.held_out} of them held out; sizes "
                     f"larger than the other {len(host.latency_ms) - host.held_out} are replaced by all of them.")
    else:
        notes.append(f"Host skipped: no measurements at {os.path.relpath(args.host, ROOT)} "
                     "(`python -m search.calibrate target=host` makes them).")
    benched.append((a50, bench(a50, sizes, splits)))
    notes.append(f"A50: {len(a50.latency_ms)} rows, {a50.held_out} held out"
                 + ("; quick mode (`--quick`): sizes up to 100 only." if args.quick else "."))
    args.out.mkdir(parents=True, exist_ok=True)
    plot(benched, args.out / "bench_predictor.png")
    image = os.path.relpath(args.out / "bench_predictor.png", args.readme.resolve().parent)
    section = "\n".join([
        f"Produced by `scripts/bench_predictor.py{' --quick' if args.quick else ''}` on {machine()}: "
        f"mean over up to {splits} random draws of the fit rows per size, scored on fixed held-out rows. "
        "MACs: least squares on MACs and a constant; MACs+memory: least squares on MACs, activations and "
        "weights of dense and depthwise layers (6 coefficients).", "", table(benched), "", *notes, "",
        f"![accuracy against calibration measurements]({image})"])
    (args.out / "bench_predictor.md").write_text(section + "\n")
    print(section)
    write_readme(section, args.readme, "predictor")


if __name__ == "__main__":
    main()
