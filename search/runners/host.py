"""Latency of ONNX models on this machine's CPU, measured with onnxruntime, batch 1.

One session per model with a fixed number of intra-op threads, one inter-op thread, sequential execution, all
graph optimisations and the CPU provider only; a fixed random input; warm-up runs, then timed runs
(`time.perf_counter` around each `run`) until both `min_runs` runs and `min_seconds` seconds are reached. The
result is the median and the inter-quartile range of the timed runs, in milliseconds.
"""
from __future__ import annotations

import os
import platform
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

PROVIDER = "CPUExecutionProvider"
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
           "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


@dataclass(frozen=True)
class Timing:
    """One model's latency: median and interquartile range in milliseconds over `runs` timed runs."""

    median_ms: float
    iqr_ms: float
    runs: int


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
    """Batch-1 latency of the ONNX model at `path` on this CPU (see the module docstring for how)."""
    _check(threads, warmup, min_runs, min_seconds)
    if not Path(path).is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    sess = session(path, threads)
    feed = _input(sess, input_shape, seed)
    outputs = [o.name for o in sess.get_outputs()]
    return timed(lambda: sess.run(outputs, feed), warmup, min_runs, min_seconds)


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


def combined(timings: Sequence[Timing]) -> Timing:
    """One model's rounds as one timing: the median of their medians and of their IQRs, every run counted."""
    return Timing(float(np.median([t.median_ms for t in timings])), float(np.median([t.iqr_ms for t in timings])),
                  sum(t.runs for t in timings))


class HostRunner:
    """Measures ONNX models on this machine's CPU with onnxruntime (see `time_model`), one model at a time, in a
    shuffled order so that slow drift of the machine does not line up with the order the caller lists models in."""

    backend = "onnx"  # the export backend whose files it runs (search.backends)

    def __init__(self, threads: int = 1, warmup: int = 10, min_runs: int = 30, min_seconds: float = 0.5,
                 reference_every: int = 10, seed: int = 0, rounds: int = 1) -> None:
        _check(threads, warmup, min_runs, min_seconds)
        for name, value in (("reference_every", reference_every), ("rounds", rounds)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.threads, self.warmup, self.min_runs, self.min_seconds = threads, warmup, min_runs, float(min_seconds)
        self.reference_every, self.seed, self.rounds = reference_every, seed, rounds

    def _time(self, path: Path) -> Timing:
        return time_model(path, threads=self.threads, warmup=self.warmup, min_runs=self.min_runs,
                          min_seconds=self.min_seconds)

    def order(self, keys: Sequence[str], round_: int = 0) -> list[str]:
        """A round's measuring order: the keys sorted, then shuffled by `seed` and the round (the same keys give
        the same orders; each round another one)."""
        ordered = sorted(keys)
        random.Random(self.seed + round_).shuffle(ordered)
        return ordered

    def measure(self, models: Mapping[str, Path], reference: Path) -> tuple[dict[str, Timing], list[Timing]]:
        """Measure every model (batch 1) `rounds` times, each round in its own shuffled order (seeded), re-measuring
        the reference model before the first, after every `reference_every` models and at the end of each round;
        returns the timings by key (in the order of `models`) and the reference's timings in order (the caller
        reports drift = spread of the reference). A model's timing is the median of its rounds: a file timed in a
        fresh interpreter or session can land 20-60% slower now and then (measured for tiny .tflite networks on
        XNNPACK), and measuring again at another time, in another order, is what averages that out."""
        for path in (reference, *models.values()):
            if not Path(path).is_file():
                raise FileNotFoundError(f"model file not found: {path}")
        references = [self._time(Path(reference))]
        rounds: dict[str, list[Timing]] = {key: [] for key in models}
        with tqdm(total=len(models) * self.rounds, desc="measuring", unit="network", dynamic_ncols=True) as bar:
            for r in range(self.rounds):
                order = self.order(list(models), r)
                for i, key in enumerate(order, 1):
                    rounds[key].append(self._time(Path(models[key])))
                    bar.update()
                    if i % self.reference_every == 0 or i == len(order):
                        references.append(self._time(Path(reference)))
        return {key: combined(rounds[key]) for key in models}, references

    def settings(self) -> dict:
        """Plain data recorded with a fitted predictor: how the models were measured, and on what."""
        return {**self.runtime(), "threads": self.threads, "inter_op_threads": 1, "execution_mode": "sequential",
                "warmup": self.warmup, "min_runs": self.min_runs, "min_seconds": self.min_seconds,
                "reference_every": self.reference_every, "rounds": self.rounds, "seed": self.seed, "batch": 1,
                "cpu": _cpu_name(), "machine": platform.machine(), "cpu_count": os.cpu_count() or 0}

    @staticmethod
    def runtime() -> dict:
        import onnxruntime as ort

        return {"runner": "host", "runtime": "onnxruntime", "onnxruntime": ort.__version__, "provider": PROVIDER,
                "graph_optimization": "all"}
