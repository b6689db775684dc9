"""Latency of ONNX models on this machine's CPU, measured with onnxruntime, batch 1.

One session per model with a fixed number of intra-op threads, one inter-op thread, sequential execution, all
graph optimisations and the CPU provider only; a fixed random input; warm-up runs, then timed runs
(`time.perf_counter` around each `run`). The result is the median and the inter-quartile range, in milliseconds.

Many models are measured interleaved (`HostRunner.measure`): every model's session stays open and each pass times
a short burst of every model, in a new shuffled order per pass. A shared machine slows down in spells (seen here:
one pass in seven up to 1.5x slower, for every model alike); timed in one block each, models caught in a spell
are off by that much, while interleaved, every model sees the same spells and its median over passes ignores
them. The host-litert calibration's noise floor went from 9-30% (block by block) to 0.4-3.2% (interleaved).
Every file stays open until the measurement ends: right for calibration's small networks, a limit for hundreds
of large models.
"""
from __future__ import annotations

import math
import os
import platform
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

PROVIDER = "CPUExecutionProvider"
_DTYPES: dict[str, Any] = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
           "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


@dataclass(frozen=True)
class Timing:
    """One model's latency: median and interquartile range in milliseconds over `runs` timed runs."""

    median_ms: float
    iqr_ms: float
    runs: int
    repeat: float | None = None  # |median of even passes - median of odd ones| / median, when measured in passes


def _check(threads: int, warmup: int, min_runs: int, min_seconds: float) -> None:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
    if isinstance(min_runs, bool) or not isinstance(min_runs, int) or min_runs < 1:
        raise ValueError(f"min_runs must be an integer >= 1, got {min_runs!r}")
    if isinstance(min_seconds, bool) or not isinstance(min_seconds, (int, float)) or not min_seconds >= 0:
        raise ValueError(f"min_seconds must be a number >= 0, got {min_seconds!r}")


def session(path: str | Path, threads: int):
    """The onnxruntime session every measurement uses: the one parity checks run (`backends.onnx.session`),
    with fixed intra-op threads, one inter-op thread and sequential execution."""
    from ..backends.onnx import session as onnx_session

    return onnx_session(path, threads)


def _input(sess, input_shape: Sequence[int] | None, seed: int) -> dict[str, np.ndarray]:
    """A fixed random batch-1 input: `input_shape` is (C, H, W) (or the full shape); None reads the model's
    input, with any symbolic dimension (the batch) set to 1."""
    (inp,) = sess.get_inputs()  # the models measured here have one input
    if input_shape is None:
        if any(not isinstance(d, int) for d in inp.shape[1:]):
            raise ValueError(f"model input {inp.name!r} has symbolic dimensions {inp.shape}: pass input_shape")
        shape = (1, *inp.shape[1:])
    else:
        shape = tuple(int(d) for d in input_shape)
        if len(shape) == len(inp.shape) - 1:
            shape = (1, *shape)
    dtype = _DTYPES.get(inp.type)
    if dtype is None:
        raise ValueError(f"model input {inp.name!r} has type {inp.type}; only float and 8-bit inputs are supported")
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return {inp.name: rng.integers(info.min, info.max, shape, endpoint=True, dtype=dtype)}
    return {inp.name: rng.standard_normal(shape).astype(dtype)}


def time_model(path: str | Path, threads: int = 1, warmup: int = 10, min_runs: int = 30, min_seconds: float = 0.5,
               input_shape: Sequence[int] | None = None, seed: int = 0) -> Timing:
    """Batch-1 latency of the ONNX model at `path` on this CPU, alone (see the module docstring for how)."""
    _check(threads, warmup, min_runs, min_seconds)
    return timed(runnable(path, threads, input_shape, seed), warmup, min_runs, min_seconds)


def runnable(path: str | Path, threads: int, input_shape: Sequence[int] | None = None, seed: int = 0):
    """A call that runs the ONNX model at `path` once, batch 1, on a fixed random input."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    sess = session(path, threads)
    feed = _input(sess, input_shape, seed)
    outputs = [o.name for o in sess.get_outputs()]
    return lambda: sess.run(outputs, feed)


def timed(call, warmup: int, min_runs: int, min_seconds: float) -> Timing:
    """Median and IQR of `call()`: `warmup` untimed calls, then timed ones until both `min_runs` calls and
    `min_seconds` seconds are reached (every runtime's timing loop: `time_model`, `runners.litert`)."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    clock = time.perf_counter
    start = clock()
    while len(times) < min_runs or clock() - start < min_seconds:
        t0 = clock()
        call()
        times.append(clock() - t0)
    q1, median, q3 = np.percentile(np.asarray(times) * 1e3, [25, 50, 75])
    return Timing(float(median), float(q3 - q1), len(times))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class HostRunner:
    """Measures ONNX models on this machine's CPU with onnxruntime, interleaved (see the module docstring)."""

    backend = "onnx"  # the export backend whose files it runs (search.backends)

    def __init__(self, threads: int = 1, warmup: int = 10, passes: int = 30, min_seconds: float = 0.3,
                 seed: int = 0) -> None:
        _check(threads, warmup, 1, min_seconds)
        if isinstance(passes, bool) or not isinstance(passes, int) or passes < 2:
            raise ValueError(f"passes must be an integer >= 2, got {passes!r}")
        self.threads, self.warmup, self.passes, self.min_seconds, self.seed = (threads, warmup, passes,
                                                                               float(min_seconds), seed)

    def _open(self, path: Path):
        """A call that runs the file once (its session or interpreter kept open for the whole measurement)."""
        return runnable(path, self.threads, seed=self.seed)

    def time(self, path: Path, min_runs: int = 30, min_seconds: float = 0.5) -> Timing:
        """One file alone, as `time_model` times it: warm-up, then the median of at least `min_runs` runs and
        `min_seconds`."""
        return timed(self._open(Path(path)), self.warmup, min_runs, min_seconds)

    def order(self, keys: Sequence[str], pass_: int = 0) -> list[str]:
        """A pass's measuring order: the keys sorted, then shuffled by `seed` and the pass (the same keys give
        the same orders; each pass another one)."""
        ordered = sorted(keys)
        random.Random(self.seed + pass_).shuffle(ordered)
        return ordered

    def measure(self, models: Mapping[str, Path], reference: Path) -> tuple[dict[str, Timing], list[Timing]]:
        """Every model and the reference, interleaved: opened and warmed up once, then `passes` passes, each
        timing a burst of every model in its own shuffled order (seeded). A burst is as many calls as fill
        `min_seconds / passes` (at least one), its median one sample; a model's timing is the median of its
        samples. Returns the timings by key (in the order of `models`) and the reference's samples in pass order
        (the caller reports the machine's drift as their spread)."""
        for path in (reference, *models.values()):
            if not Path(path).is_file():
                raise FileNotFoundError(f"model file not found: {path}")
        files = {**{f"model:{k}": Path(p) for k, p in models.items()}, "reference": Path(reference)}
        calls, bursts = {}, {}
        for key, path in files.items():
            calls[key] = self._open(path)
            warm = timed(calls[key], 0, max(self.warmup, 1), 0.0).median_ms / 1e3
            bursts[key] = max(1, math.ceil(self.min_seconds / self.passes / max(warm, 1e-7)))
        samples: dict[str, list[Timing]] = {key: [] for key in files}
        for p in tqdm(range(self.passes), desc=f"measuring {len(models)} networks", unit="pass", dynamic_ncols=True):
            for key in self.order(list(files), p):
                samples[key].append(timed(calls[key], 0, bursts[key], 0.0))
        return {key: _over_passes(samples[f"model:{key}"]) for key in models}, samples["reference"]

    def settings(self) -> dict:
        """Plain data recorded with a fitted predictor: how the models were measured, and on what."""
        return {**self.runtime(), "threads": self.threads, "inter_op_threads": 1, "execution_mode": "sequential",
                "warmup": self.warmup, "passes": self.passes, "min_seconds": self.min_seconds,
                "interleaved": True, "seed": self.seed, "batch": 1, "cpu": _cpu_name(),
                "machine": platform.machine(), "cpu_count": os.cpu_count() or 0}

    @staticmethod
    def runtime() -> dict:
        import onnxruntime as ort

        return {"runner": "host", "runtime": "onnxruntime", "onnxruntime": ort.__version__, "provider": PROVIDER,
                "graph_optimization": "all"}


def _over_passes(samples: Sequence[Timing]) -> Timing:
    """One model's samples as one timing: the median and IQR of the samples' medians, every run counted, and how
    far the even and the odd passes' medians lie apart (the measurement's own repeatability)."""
    medians = np.array([t.median_ms for t in samples])
    q1, median, q3 = np.percentile(medians, [25, 50, 75])
    repeat = abs(float(np.median(medians[::2]) - np.median(medians[1::2]))) / median
    return Timing(float(median), float(q3 - q1), sum(t.runs for t in samples), repeat)
