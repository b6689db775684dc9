"""Latency of `.tflite` files on this machine's CPU, as LiteRT runs them on a phone: the XNNPACK delegate, batch 1.

The host runner's discipline (`runners.host`): one interpreter per file with a fixed number of threads, a fixed
random input set once, warm-up invokes, then timed `invoke()`s until both `min_runs` and `min_seconds` are
reached; median and IQR; files measured in a shuffled order with a re-measured reference for drift.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .host import HostRunner, Timing, _check, timed


def time_model(path: str | Path, threads: int = 1, warmup: int = 10, min_runs: int = 30, min_seconds: float = 0.5,
               seed: int = 0, xnnpack: bool = True) -> Timing:
    """Batch-1 latency of the `.tflite` file at `path` on this CPU (XNNPACK unless `xnnpack=False`)."""
    from ..backends.litert import interpreter

    _check(threads, warmup, min_runs, min_seconds)
    if not Path(path).is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    it = interpreter(path, threads, xnnpack)
    inp = it.get_input_details()[0]
    rng = np.random.default_rng(seed)
    if np.issubdtype(inp["dtype"], np.integer):
        info = np.iinfo(inp["dtype"])
        x = rng.integers(info.min, info.max, inp["shape"], endpoint=True, dtype=inp["dtype"])
    else:
        x = rng.standard_normal(inp["shape"]).astype(inp["dtype"])
    it.set_tensor(inp["index"], x)
    return timed(it.invoke, warmup, min_runs, min_seconds)


class LiteRTRunner(HostRunner):
    """Measures `.tflite` files on this machine's CPU with LiteRT's XNNPACK delegate (see `time_model`)."""

    backend = "litert"

    def _time(self, path: Path) -> Timing:
        return time_model(path, threads=self.threads, warmup=self.warmup, min_runs=self.min_runs,
                          min_seconds=self.min_seconds)

    @staticmethod
    def runtime() -> dict:
        from importlib.metadata import version

        return {"runner": "litert", "runtime": "litert", "litert": version("ai-edge-litert"), "provider": "XNNPACK"}
