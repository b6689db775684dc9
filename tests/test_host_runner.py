"""search.runners.host: real onnxruntime timings of a tiny model, and the measuring order and reference cadence
of HostRunner.measure (time_model patched to record its calls, so those tests take no time)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from search.runners import host
from search.runners.host import HostRunner, Timing, time_model


def tiny_model(path: Path, channels: int = 3) -> Path:
    """input (N, C, 4, 4) -> 1x1 Conv -> Relu -> logits: builds in microseconds, runs in microseconds."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, channels, 1, 1],
                           np.random.default_rng(0).standard_normal(4 * channels).tolist())
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"]), helper.make_node("Relu", ["c"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4, 4, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def model(tmp_path) -> Path:
    return tiny_model(tmp_path / "tiny.onnx")


# --- time_model: real measurements -----------------------------------------------------------------------------------


def test_time_model_measures(model):
    t = time_model(model, threads=1, warmup=2, min_runs=7, min_seconds=0.0, input_shape=(3, 4, 4))
    assert isinstance(t, Timing)
    assert t.median_ms > 0 and t.iqr_ms >= 0 and t.runs >= 7
    assert t.median_ms < 100  # a 4x4 1x1 conv: anything slower is not a measurement of the model


def test_time_model_runs_until_min_seconds(model):
    start = time.perf_counter()
    t = time_model(model, threads=1, warmup=0, min_runs=1, min_seconds=0.05)
    assert time.perf_counter() - start >= 0.05
    assert t.runs > 1 and t.runs * t.median_ms / 1e3 <= time.perf_counter() - start


def test_time_model_reads_the_input_shape_and_checks_arguments(model, tmp_path):
    assert time_model(model, threads=1, warmup=0, min_runs=3, min_seconds=0).runs >= 3  # (batch, 3, 4, 4) -> batch 1
    with pytest.raises(ValueError, match="threads"):
        time_model(model, threads=0, warmup=0, min_runs=3, min_seconds=0)
    with pytest.raises(ValueError, match="min_runs"):
        time_model(model, threads=1, warmup=0, min_runs=0, min_seconds=0)
    with pytest.raises(FileNotFoundError):
        time_model(tmp_path / "missing.onnx", threads=1, warmup=0, min_runs=3, min_seconds=0)


# --- HostRunner.measure: order and references ------------------------------------------------------------------------


@pytest.fixture
def recorded(monkeypatch):
    """time_model replaced by a recorder: the call log (paths) and each call's settings; the returned Timing's
    median is the call's position, so the tests can tell which measurement went where."""
    calls: list[dict] = []

    def fake(path, **settings):
        calls.append({"path": Path(path), **settings})
        return Timing(float(len(calls)), 0.0, settings["min_runs"])

    monkeypatch.setattr(host, "time_model", fake)
    return calls


def models(tmp_path: Path, n: int) -> tuple[dict[str, Path], Path]:
    paths = {f"m{i:02d}": tmp_path / f"m{i:02d}.onnx" for i in range(n)}
    for p in paths.values():
        p.write_bytes(b"model")
    reference = tmp_path / "reference.onnx"
    reference.write_bytes(b"reference")
    return paths, reference


@pytest.mark.parametrize("n, every, expected", [(23, 10, [0, 11, 22, 26]), (20, 10, [0, 11, 22]), (3, 10, [0, 4]),
                                                (4, 2, [0, 3, 6])])
def test_reference_at_start_every_n_and_end(recorded, tmp_path, n, every, expected):
    paths, reference = models(tmp_path, n)
    timings, refs = HostRunner(reference_every=every, seed=1).measure(paths, reference)
    log = [c["path"] for c in recorded]
    assert [i for i, p in enumerate(log) if p == reference] == expected
    assert len(log) == n + len(expected)
    assert set(timings) == set(paths) and list(timings) == list(paths)  # every key, in the caller's order
    # each key's timing is the measurement of its own file; the reference timings are in order
    assert all(log[int(t.median_ms) - 1] == paths[k] for k, t in timings.items())
    assert [int(t.median_ms) - 1 for t in refs] == expected


def test_order_is_shuffled_and_deterministic(recorded, tmp_path):
    paths, reference = models(tmp_path, 23)

    def order(seed: int, keys=None) -> list[Path]:
        recorded.clear()
        chosen = paths if keys is None else {k: paths[k] for k in keys}
        HostRunner(seed=seed).measure(chosen, reference)
        return [c["path"] for c in recorded if c["path"] != reference]

    first = order(0)
    assert sorted(first) == sorted(paths.values())
    assert first != sorted(paths.values())  # shuffled
    assert order(0) == first  # the same seed, the same order
    assert order(0, keys=list(reversed(paths))) == first  # whatever order the caller lists them in
    assert order(1) != first


def test_rounds_measure_every_model_again_in_another_order_and_keep_the_median(recorded, tmp_path):
    paths, reference = models(tmp_path, 12)
    timings, refs = HostRunner(reference_every=5, seed=2, rounds=3).measure(paths, reference)
    log = [c["path"] for c in recorded]
    rounds = [[p for p in log[i * 15 + 1:(i + 1) * 15 + 1] if p != reference] for i in range(3)]  # 12 + 3 refs each
    assert all(sorted(r) == sorted(paths.values()) for r in rounds) and len({tuple(r) for r in rounds}) == 3
    assert len(refs) == 1 + 3 * 3 and len(log) == 12 * 3 + len(refs)  # start, after 5, 10 and 12, every round
    for key, t in timings.items():  # the median of its three positions, and every run counted
        positions = [i + 1 for i, p in enumerate(log) if p == paths[key]]
        assert t.median_ms == sorted(positions)[1] and t.runs == 3 * 30
    with pytest.raises(ValueError, match="rounds"):
        HostRunner(rounds=0)


def test_measure_passes_the_settings_and_checks_files(recorded, tmp_path):
    paths, reference = models(tmp_path, 2)
    HostRunner(threads=2, warmup=3, min_runs=5, min_seconds=0.25).measure(paths, reference)
    assert all(c["threads"] == 2 and c["warmup"] == 3 and c["min_runs"] == 5 and c["min_seconds"] == 0.25
               for c in recorded)
    recorded.clear()
    with pytest.raises(FileNotFoundError):
        HostRunner().measure({"gone": tmp_path / "gone.onnx"}, reference)
    assert not recorded  # nothing measured before every file is known to exist


def test_settings_is_plain_data():
    runner = HostRunner(threads=2, warmup=3, min_runs=5, min_seconds=0.25, reference_every=7, seed=4)
    s = runner.settings()
    assert type(s) is dict and json.loads(json.dumps(s)) == s
    assert all(type(v) in (str, int, float, bool) for v in s.values())
    assert s["runner"] == "host" and s["threads"] == 2 and s["warmup"] == 3 and s["min_runs"] == 5
    assert s["min_seconds"] == 0.25 and s["reference_every"] == 7 and s["seed"] == 4
    with pytest.raises(ValueError, match="reference_every"):
        HostRunner(reference_every=0)


def test_measure_for_real(tmp_path):
    paths = {"a": tiny_model(tmp_path / "a.onnx"), "b": tiny_model(tmp_path / "b.onnx", channels=8)}
    reference = tiny_model(tmp_path / "ref.onnx")
    timings, refs = HostRunner(warmup=1, min_runs=3, min_seconds=0.0, reference_every=1).measure(paths, reference)
    assert set(timings) == {"a", "b"} and len(refs) == 3
    assert all(t.median_ms > 0 and t.runs >= 3 for t in [*timings.values(), *refs])
