"""The --quick modes of scripts/bench_search.py and scripts/bench_overhead.py keep working: they run real
studies and write their README sections (into a copy of the README, never the real one)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli import env

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def quick(script: str, mark: str, tmp_path: Path, shared_cache: Path) -> tuple[Path, Path]:
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n<!-- results:{mark} -->\nold\n<!-- /results:{mark} -->\nafter\n")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "cache").symlink_to(shared_cache)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--quick", "--folder", str(folder),
                           "--readme", str(readme)], cwd=tmp_path, env=env(tmp_path), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "\nold\n" not in text
    return folder, readme


def test_quick_bench_search_writes_its_section(tmp_path, shared_cache):
    folder, readme = quick("bench_search.py", "bench-search", tmp_path, shared_cache)
    results = json.loads((folder / "results.json").read_text())
    for method in ("joint", "random", "sequential"):
        curve = results[method]["0"]["hypervolume"]
        assert len(curve) == 6 and curve == sorted(curve)  # one point per completed trial, never decreasing
        assert set(results[method]["0"]["baselines"]) == {"float", "int8"}
    text = readme.read_text()
    assert "| joint |" in text and "| sequential |" in text and (folder / "bench-search.png").exists()
    again = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_search.py"), "--quick", "--no-run", "--folder",
                            str(folder), "--readme", str(readme)], cwd=tmp_path, env=env(tmp_path), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert readme.read_text() == text  # the same section from the same studies


def test_a_baseline_is_not_dominated_by_its_own_network_evaluated_again():
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_search import dominators

    from search.pareto import Point

    int8 = {"bits.a": 8, "width.a": 1.0}
    base = Point(1, {"accuracy": 99.05, "latency_ms": 8.64}, int8, True, "int8")
    again = Point(32, {"accuracy": 99.13, "latency_ms": 8.64}, dict(int8), True)  # same network, luckier fine-tune
    pruned = Point(7, {"accuracy": 99.05, "latency_ms": 7.9}, {"bits.a": 8, "width.a": 0.75}, True)
    worse = Point(9, {"accuracy": 99.0, "latency_ms": 7.0}, {"bits.a": 8, "width.a": 0.5}, True)
    objectives = ["accuracy", "latency_ms"]
    assert dominators(base, [base, again, worse], objectives) == []
    assert dominators(base, [base, again, pruned, worse], objectives) == [7]


def test_quick_bench_overhead_writes_its_section(tmp_path, shared_cache):
    folder, readme = quick("bench_overhead.py", "bench-overhead", tmp_path, shared_cache)
    results = json.loads((folder / "results.json").read_text())
    for r in [results["default"], *results["workers"].values()]:
        assert r["trials"] == 3 and 0 < r["evaluate_s"] < r["wall_s"] and 0 < r["outside_share"] < 1
    one, two = results["workers"]["1"], results["workers"]["2"]
    assert one["mmacs"] == two["mmacs"]  # the same networks with 1 and with 2 workers
    assert results["first_trial_s"] > 0 and results["machinery"]["predict_s"] > 0
    assert "trials per minute" in readme.read_text()
