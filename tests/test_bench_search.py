"""scripts/bench_search.py --quick keeps working: it runs real studies (each method on digits) and writes its README
section into a copy of the README, never the real one."""
import json
import subprocess
import sys

import pytest

from tests.cli import ROOT, env, quick


@pytest.mark.slow
def test_quick_bench_search_writes_its_section(tmp_path, shared_cache):
    folder, readme = quick("bench_search.py", "bench-search", tmp_path, shared_cache)
    results = json.loads((folder / "results.json").read_text())
    for method in ("joint", "random", "sequential"):
        curve = results[method]["0"]["hypervolume"]
        assert len(curve) == 6 and curve == sorted(curve)  # one point per network trained, never decreasing
        assert set(results[method]["0"]["baselines"]) == {"float", "int8"}
    assert all((folder / f"sequential-s0-{stage}").is_dir() for stage in ("width", "sparsity", "bits"))  # a study each
    near = results["neighbours"]  # the int8 baseline again, evaluated as its trial was, then its neighbours
    assert near[0]["network"] == "uniform 8-bit baseline" and len(near) > 1
    assert {n["network"] for n in near[1:]} >= {"`width.head=0.75`", "`sparsity.b1.expand=0.25`"}
    int8 = results["joint"]["0"]["baselines"]["int8"]
    assert abs(near[0]["accuracy"] - int8["accuracy"]) < 1.0  # the same network, seed and fine-tune
    assert near[0]["latency_ms"] == pytest.approx(int8["latency_ms"])
    text = readme.read_text()
    assert "| joint |" in text and "| sequential |" in text and (folder / "bench-search.png").exists()
    assert "What it takes to dominate the uniform 8-bit baseline" in text
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
