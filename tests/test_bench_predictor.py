"""scripts/bench_predictor.py: `--quick` runs on the shipped A50 file alone, writes the table, the
plot and a README section (into copies, never the real README), says when the host was skipped,
and its numbers say what they should: the predictor beats MACs on the phone, and on host-like
measurements of a known model it is exact once the fit rows cover it."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from search import measurements
from search.calibrate import Request, calibration_set
from search.config import compose, resolve
from search.latency import features
from search.measurements import Measurement

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import bench_predictor  # noqa: E402

MARK, END = "<!-- results:predictor -->", "<!-- /results:predictor -->"


def cells(section: str, label: str, rows: int) -> list[str]:
    line = next(x for x in section.splitlines() if x.startswith(f"| {label} | {rows} rows |"))
    return [c.strip() for c in line.strip("|").split("|")]


@pytest.mark.slow
def test_quick_run_writes_table_plot_and_readme_copy(tmp_path):
    real = hashlib.sha256((ROOT / "README.md").read_bytes()).hexdigest()
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n\n{MARK}\nold text\n{END}\n\nafter\n")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_predictor.py"), "--quick", "--readme",
                          str(readme), "--out", str(out), "--host", str(tmp_path / "no-host.csv")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert hashlib.sha256((ROOT / "README.md").read_bytes()).hexdigest() == real

    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "old text" not in text
    section = text.split(MARK + "\n")[1].split("\n" + END)[0]
    assert (out / "bench_predictor.md").read_text() == section + "\n"
    assert (out / "bench_predictor.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![accuracy against calibration measurements](out/bench_predictor.png)" in section
    assert "Host skipped: no measurements at" in section and "this host" not in section
    assert "--quick" in section and "cores" in section

    label = "Samsung A50 (fbnet, real phone)"
    for n in (10, 30, 100):
        assert cells(section, label, n)[2] == "2"  # splits
    assert "300 rows" not in section
    # columns: label, rows, splits, then (MAPE, within 10%, Spearman) for predictor, MACs, MACs+memory
    ours, macs = cells(section, label, 100)[3:6], cells(section, label, 100)[6:9]
    assert float(ours[1].rstrip("%")) >= 85.0
    assert float(ours[0].rstrip("%")) < float(macs[0].rstrip("%"))
    assert float(ours[2]) > float(macs[2])


@pytest.fixture
def host_like(tmp_path) -> Path:
    """100 mobilenetv2 networks whose 'measured' latency is a known linear model of the features (enough rows for
    every coefficient of the host's kernels: float, int8 and dequantized layers each have their own)."""
    r = Request.of(resolve(compose(["target=host"], "calibrate")))
    space = r.build_space()
    kernels = {int(k): v for k, v in r.target["kernels"].items()}
    price = {"macs": 0.02, "activations": 0.5, "weights": 0.3, "layers": 0.002, "count": 0.001}
    rows = []
    for i, c in enumerate(calibration_set(space, 100, seed=1)):
        f = features(space.layers(c), kernels, False)
        latency = 0.01 + sum(price[k.rsplit(".", 1)[1]] * v for k, v in f.items() if k != "network")
        rows.append(Measurement(str(i), c, latency))
    path = tmp_path / "host.csv"
    measurements.write(path, space, rows)
    return path


def test_host_sizes_beyond_the_rows_become_all_rows_and_a_known_model_is_found(host_like):
    data = bench_predictor.load("host", "host", "mobilenetv2", host_like, 0.2)
    assert data.held_out == 20
    results = bench_predictor.bench(data, (10, 30, 100), splits=2)
    assert [(r["n"], r["splits"]) for r in results] == [(10, 2), (30, 2), (80, 1)]
    mape, within, rho = results[-1]["predictor"]
    assert within == 1.0 and mape < 0.01 and rho > 0.99
    assert results[-1]["MACs"][0] > 5 * mape
