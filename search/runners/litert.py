"""Latency of `.tflite` files on this machine's CPU, as LiteRT runs them on a phone: the XNNPACK delegate, batch 1.

The host runner's discipline (`runners.host`): one interpreter per file with a fixed number of threads, a fixed
random input set once, warm-up invokes, then timed `invoke()`s; many files measured interleaved, in passes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .host import HostRunner, Timing, _check, timed


def time_model(path: str | Path, threads: int = 1, warmup: int = 10, min_runs: int = 30, min_seconds: float = 0.5,
               seed: int = 0, xnnpack: bool = True) -> Timing:
    """Batch-1 latency of the `.tflite` file at `path` on this CPU, alone (XNNPACK unless `xnnpack=False`)."""
    _check(threads, warmup, min_runs, min_seconds)
    return timed(runnable(path, threads, seed, xnnpack), warmup, min_runs, min_seconds)


def runnable(path: str | Path, threads: int, seed: int = 0, xnnpack: bool = True):
    """A call that runs the `.tflite` file at `path` once, batch 1, on a fixed random input."""
    from ..backends.litert import interpreter

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
    return it.invoke


class LiteRTRunner(HostRunner):
    """Measures `.tflite` files on this machine's CPU with LiteRT's XNNPACK delegate, interleaved (`HostRunner`)."""

    backend = "litert"

    def _open(self, path: Path):
        return runnable(path, self.threads, self.seed)

    @staticmethod
    def runtime() -> dict:
        from importlib.metadata import version

        return {"runner": "litert", "runtime": "litert", "litert": version("ai-edge-litert"), "provider": "XNNPACK"}
