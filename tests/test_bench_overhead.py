"""scripts/bench_overhead.py --quick keeps working: it runs real studies (1 and 2 workers, results told in order and as they come) and writes its README
section into a copy of the README, never the real one."""
import json

import pytest

from tests.cli import quick


@pytest.mark.slow
def test_quick_bench_overhead_writes_its_section(tmp_path, shared_cache):
    folder, readme = quick("bench_overhead.py", "bench-overhead", tmp_path, shared_cache)
    results = json.loads((folder / "results.json").read_text())
    for r in [results["default"], *results["workers"].values()]:
        assert r["trials"] == 3 and 0 < r["evaluate_s"] < r["wall_s"] and 0 < r["outside_share"] < 1
    one, two, unordered = results["workers"]["1"], results["workers"]["2"], results["workers"]["2-unordered"]
    assert one["mmacs"] == two["mmacs"] == unordered["mmacs"]  # the same networks with 1 and with 2 workers
    assert results["first_trial_s"] > 0 and results["machinery"]["predict_s"] > 0
    assert "trials per minute" in readme.read_text()
