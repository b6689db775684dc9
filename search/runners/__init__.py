"""Latency runners: measure exported models on real hardware so a latency predictor can be fitted to it.

`host` times ONNX files with onnxruntime on this machine's CPU, `litert` `.tflite` files with LiteRT's XNNPACK
kernels, `adb` either on an Android phone. A runner is registered in `RUNNERS` (a `spaces.registry.Registry`: its
module is imported only when asked for) and honours `Runner`.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from spaces.registry import Registry

if TYPE_CHECKING:
    from .host import Timing


class Runner(Protocol):
    """What calibration and promote ask of a runner."""

    @property
    def backend(self) -> str:
        """The export backend whose files it runs (`search.backends`)."""

    def measure(self, models: Mapping[str, Path], reference: Path) -> tuple[dict[str, Timing], list[Timing]]:
        """Each model's `Timing`, and the reference's timings spread over the run (drift shows in them)."""

    def settings(self) -> dict:
        """Plain data recorded with a fitted predictor: what was measured, how, and where."""


RUNNERS = Registry("runner", {"host": "search.runners.host:HostRunner", "litert": "search.runners.litert:LiteRTRunner",
                              "adb": "search.runners.adb:AdbRunner"})
LOCAL = ("host", "litert")  # runners on this machine: they need no device, and feed the models seeded inputs


def get(kind: str) -> Any:
    """The runner class registered as `kind` (ValueError names the choices): a plug-in, whatever its class."""
    return RUNNERS.load(kind)


def make(runner_cfg: Mapping[str, Any], seed: int) -> Runner:
    """The runner `runner_cfg["kind"]` names, with the rest of `runner_cfg` as its settings (a bad setting raises
    TypeError or ValueError)."""
    settings = {k: v for k, v in runner_cfg.items() if k != "kind"}
    return get(runner_cfg["kind"])(**settings, **({"seed": seed} if runner_cfg["kind"] in LOCAL else {}))


def time_file(backend: str, path: Path, threads: int) -> Timing | None:
    """A file timed on this machine by the local runner that runs its format (warm-up, then the median of timed
    runs); None where no local runner does."""
    for kind in LOCAL:
        runner = get(kind)
        if runner.backend == backend:
            return runner(threads=threads).time(path)
    return None


def backend_of(runner_cfg: Mapping[str, Any]) -> str | None:
    """Which export backend's files a configured runner times, without starting it (None: the tool is unknown)."""
    if runner_cfg["kind"] == "adb":  # the phone's tool decides
        from .adb import BACKENDS as TOOLS

        return TOOLS.get(str(runner_cfg.get("tool")))
    return get(runner_cfg["kind"]).backend
