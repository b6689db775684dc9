"""Score the latency predictors and write the numbers into the README.

    .venv/bin/python scripts/calibration_report.py              # A50 phone data + this host
    .venv/bin/python scripts/calibration_report.py --measure-host   # also (re)calibrate this host first

Phone: the predictor is fitted on a random 100 and 1,000 rows of the shipped Samsung A50 file and
scored on all other rows, beside a 6-coefficient least-squares fit on MAC and memory counts.
Host: the report stored in this machine's fitted predictor (`python -m search.calibrate target=host`).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_results import machine, write_readme  # noqa: E402

import spaces  # noqa: E402
from search import fitting, latency, measurements  # noqa: E402
from search.calibrate import Request, calibrate, split  # noqa: E402
from search.config import ROOT, compose, resolve  # noqa: E402

A50 = ROOT / "conf" / "measurements" / "fbnet_samsung_a50.csv"


def baseline(train_layers, train_y, test_layers) -> np.ndarray:
    """Least squares on total MACs and memory traffic: MACs, activations, weights for dense and
    depthwise layers (6 coefficients)."""
    def row(layers):
        out = np.zeros(6)
        for layer in layers:
            i = 0 if layer.groups == 1 else 3
            out[i:i + 3] += (layer.macs, np.prod(layer.in_shape) + np.prod(layer.out_shape), layer.weights)
        return out
    coef, *_ = np.linalg.lstsq(np.array([row(x) for x in train_layers]), np.asarray(train_y), rcond=None)
    return np.array([row(x) for x in test_layers]) @ coef


def phone(fit_rows: int, folder: Path) -> tuple[latency.Report, latency.Report]:
    """Our predictor and the MACs+memory baseline, fitted on the same rows, scored on the rest."""
    cfg = resolve(compose(["target=snapdragon665", "space=fbnet", f"fit_rows={fit_rows}",
                           f"holdout={1 - fit_rows / 5000}", f"target.predictor={folder}/p{fit_rows}.json",
                           f"tracking.uri=sqlite:///{folder}/m.db"], "calibrate"))
    r = Request.of(cfg)
    ours = calibrate(r)
    space = spaces.create("fbnet")
    train, test = split(measurements.read(A50, space), r.seed, r.holdout, r.fit_rows)
    predicted = baseline([space.layers(r.candidate) for r in train], [r.latency_ms for r in train],
                         [space.layers(r.candidate) for r in test])
    return ours, latency.Report.of(predicted, [r.latency_ms for r in test])


def outlier_runs() -> tuple[float, float]:
    """Share of A50 rows more than 10% off a fit on all rows, and how strongly such rows cluster
    in consecutive measurements (lag-1 autocorrelation of the outlier flag)."""
    space = spaces.create("fbnet")
    rows = measurements.read(A50, space)
    kernels = {32: "fp32"}
    layers = [space.layers(r.candidate) for r in rows]
    y = np.array([r.latency_ms for r in rows])
    predictor = latency.Predictor("a50", kernels, False, fitting.fit(layers, y, kernels, False))
    off = np.abs(np.array([predictor.predict(x) for x in layers]) - y) / y > 0.10
    return float(off.mean()), float(np.corrcoef(off[:-1], off[1:])[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure-host", action="store_true")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args()
    if args.measure_host:
        subprocess.run([sys.executable, "-m", "search.calibrate", "target=host"], check=True, cwd=ROOT)
    lines = ["| measurements | fitted on | scored on | within ±10% | within ±5% | MAPE | Spearman | MACs+memory fit, within ±10% |",
             "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for n in (100, 1000):
            ours, base = phone(n, Path(tmp))
            lines.append(f"| Samsung A50 (fbnet, real phone) | {n} rows | {ours.n} rows | {ours.within_10pct:.1%} | "
                         f"{ours.within_5pct:.1%} | {ours.mape:.1%} | {ours.spearman:.3f} | {base.within_10pct:.1%} |")
    host = resolve(compose(["target=host"], "calibrate"))["target"]["predictor"]
    if Path(host).exists():
        p = json.loads(Path(host).read_text())["provenance"]
        r = p["report"]
        lines.append(f"| this host (mobilenetv2, onnxruntime) | {p['fit_rows']} networks | {r['n']} networks | "
                     f"{r['within_10pct']:.1%} | {r['within_5pct']:.1%} | {r['mape']:.1%} | {r['spearman']:.3f} | |")
        spread = ("median IQR/median of each network's timed runs" if p["runner"].get("runner") == "file"
                  else "IQR/median of a reference network re-measured through the run")
        noise = f"Host noise floor ({spread}): {r['noise_floor']:.1%}. Host: {machine()}."
    else:
        noise = "This host has not been calibrated yet (`python -m search.calibrate target=host`)."
    share, clustering = outlier_runs()
    lines += ["", noise, f"A50: even fitted on all 5,000 rows, {share:.1%} of them are more than 10% off, and those rows "
              f"come in runs of consecutive measurements (lag-1 autocorrelation {clustering:.2f}): interference "
              "during measurement, which no description of the network can predict. The rows are whole milliseconds."]
    section = "\n".join(lines)
    print(section)
    write_readme(section, args.readme, "calibration")


if __name__ == "__main__":
    main()
