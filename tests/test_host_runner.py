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


# --- HostRunner.measure: interleaved passes -------------------------------------------------------------------------


class Recording(HostRunner):
    """A runner whose files are fakes: each call records its file and advances a clock the test controls by
    `latency(path, pass)` (pass -1 while warming up), so a file's latency is whatever the test says; bursts are
    timed by the real loop."""

    def __init__(self, latency, **settings):
        super().__init__(**settings)
        self.latency, self.log, self.pass_ = latency, [], -1

    def _open(self, path: Path):
        def call():
            self.log.append(path)
            Recording.now += self.latency(path, self.pass_)
        return call

    def order(self, keys, pass_=0):
        self.pass_ = pass_
        return super().order(keys, pass_)


@pytest.fixture
def clock(monkeypatch):
    Recording.now = 0.0
    monkeypatch.setattr(host.time, "perf_counter", lambda: Recording.now)


def models(tmp_path: Path, n: int) -> tuple[dict[str, Path], Path]:
    paths = {f"m{i:02d}": tmp_path / f"m{i:02d}.onnx" for i in range(n)}
    for p in paths.values():
        p.write_bytes(b"model")
    reference = tmp_path / "reference.onnx"
    reference.write_bytes(b"reference")
    return paths, reference


def passes(runner: Recording, files: int) -> list[list[Path]]:
    """The measuring order of each pass: after every file's warm-up, each burst's first call."""
    timed = runner.log[files * runner.warmup:]
    bursts = [p for i, p in enumerate(timed) if i == 0 or timed[i - 1] != p]
    return [bursts[i:i + files] for i in range(0, len(bursts), files)]


def test_every_pass_times_every_model_and_the_reference_in_its_own_seeded_order(clock, tmp_path):
    paths, reference = models(tmp_path, 12)
    runner = Recording(lambda path, pass_: 1e-3, warmup=2, passes=4, min_seconds=0.012, seed=3)
    timings, refs = runner.measure(paths, reference)
    orders = passes(runner, 13)
    assert len(orders) == 4 and all(sorted(o) == sorted([*paths.values(), reference]) for o in orders)
    assert len({tuple(o) for o in orders}) == 4  # each pass in another order
    again = Recording(lambda path, pass_: 1e-3, warmup=2, passes=4, min_seconds=0.012, seed=3)
    again.measure(dict(reversed(paths.items())), reference)
    assert passes(again, 13) == orders  # the same seed, the same orders, whatever order the caller lists them in
    assert list(timings) == list(paths) and len(refs) == 4
    # a burst fills min_seconds / passes: 3 ms of 1 ms calls
    assert all(t.runs == 4 * 3 and t.median_ms == pytest.approx(1.0) for t in [*timings.values()])
    assert all(r.runs == 3 for r in refs)


def test_a_slow_spell_of_the_machine_does_not_move_the_medians(clock, tmp_path):
    """The machine runs 1.5x slower during one pass in four: whole-block timing would put the models measured
    then 50% off; over passes every model sees the spell once and its median ignores it."""
    paths, reference = models(tmp_path, 6)
    base = {p: 1e-3 * (1 + i) for i, p in enumerate([*paths.values(), reference])}
    runner = Recording(lambda path, pass_: base[path] * (1.5 if pass_ == 5 else 1.0), warmup=2, passes=8,
                       min_seconds=8 * 7e-3)
    timings, refs = runner.measure(paths, reference)
    for key, t in timings.items():
        assert t.median_ms == pytest.approx(1e3 * base[paths[key]]) and t.repeat == pytest.approx(0.0)
    slow = [round(r.median_ms / (1e3 * base[reference]), 6) for r in refs]
    assert slow.count(1.5) == 1 and slow.count(1.0) == 7  # the reference shows the spell: that is the drift


def test_measure_checks_settings_and_files_before_measuring(tmp_path):
    paths, reference = models(tmp_path, 2)
    for bad in ({"passes": 1}, {"threads": 0}, {"warmup": -1}, {"min_seconds": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            HostRunner(**bad)
    runner = Recording(lambda path, pass_: 1e-3)
    with pytest.raises(FileNotFoundError):
        runner.measure({"gone": tmp_path / "gone.onnx"}, reference)
    assert not runner.log  # nothing measured before every file is known to exist


def test_settings_is_plain_data():
    runner = HostRunner(threads=2, warmup=3, passes=7, min_seconds=0.25, seed=4)
    s = runner.settings()
    assert type(s) is dict and json.loads(json.dumps(s)) == s
    assert all(type(v) in (str, int, float, bool) for v in s.values())
    assert s["runner"] == "host" and s["threads"] == 2 and s["warmup"] == 3 and s["passes"] == 7
    assert s["min_seconds"] == 0.25 and s["seed"] == 4 and s["interleaved"] is True


def test_measure_for_real(tmp_path):
    paths = {"a": tiny_model(tmp_path / "a.onnx"), "b": tiny_model(tmp_path / "b.onnx", channels=8)}
    reference = tiny_model(tmp_path / "ref.onnx")
    timings, refs = HostRunner(warmup=1, passes=3, min_seconds=0.0).measure(paths, reference)
    assert set(timings) == {"a", "b"} and len(refs) == 3
    assert all(t.median_ms > 0 and t.runs >= 3 and t.repeat is not None for t in timings.values())
    assert all(r.median_ms > 0 and r.runs >= 1 for r in refs)
