"""Export backends: a trained network of any space becomes one deployable file for one runtime.

A backend is a module honouring `Backend`, registered in `BACKENDS` (a `spaces.registry.Registry`: imported only
when asked for, so one backend's dependencies never load with another's). Promote ships one file per registered
backend, each gated on its own (tests/test_backends.py holds every backend to the contract over every space).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from spaces.precision import BITS, FLOAT_BITS, integer_kernel
from spaces.registry import Registry

if TYPE_CHECKING:
    import numpy as np
    from torch import nn


@runtime_checkable
class Backend(Protocol):
    """One file format, as promote, calibration and the contract suite use it."""

    NAME: str  # its name in BACKENDS, in HOLDS and in the tags and files of a promotion
    SUFFIX: str  # the file's suffix, with its dot
    GATE: str  # the promote setting bounding the file's top-1 agreement with the network (min_agreement, ...)

    def export(self, net: nn.Module, input_shape: tuple[int, int, int], path: str | Path) -> Path:
        """The trained network as one file at `path`, computing what the fake-quantized network computed
        (`spaces.fold`); ValueError, naming a layer, where the network's precisions cannot be this format."""

    def outputs(self, path: str | Path, x: np.ndarray) -> np.ndarray:
        """The file's logits on the images `x`, run by the format's runtime on this machine."""

    def reference(self, net: nn.Module, input_shape: tuple[int, int, int]) -> nn.Module:
        """The network as the file computes it, which the parity gate compares the file with (the network itself
        where the format rounds nothing of its own)."""

    def audit(self, path: str | Path, net: nn.Module, input_shape: tuple[int, int, int]) -> list[str]:
        """What the file does not hold of the network's precision plan, read exactly (no rounding involved, so the
        same on every CPU); empty when it holds all of it."""

    def layer_errors(self, net: nn.Module, path: str | Path, x: np.ndarray) -> dict[str, float]:
        """Each layer's relative difference between the file and the network on `x`, in network order (a refusal
        names where it starts), or {} where the format cannot show its layers' outputs."""


BACKENDS = Registry("backend", {"onnx": "search.backends.onnx", "litert": "search.backends.litert"})

# The precisions each format's file can hold, torch-free (a config is narrowed by them before anything loads): a
# target's `file` narrows the space's bit-widths to its format's. ONNX holds every one (int4/int8/int16 storage);
# a .tflite that runs on XNNPACK holds 5-8 bits (int8 kernels) and float, nothing else (see backends/litert.py).
HOLDS = {"onnx": BITS, "litert": tuple(b for b in BITS if b == FLOAT_BITS or integer_kernel(b))}


def get(name: str) -> Backend:
    """The backend registered as `name` (ValueError names the choices)."""
    module = BACKENDS.load(name)
    if not isinstance(module, Backend):
        members = [*Backend.__annotations__, *(m for m in vars(Backend) if not m.startswith("_"))]
        raise TypeError(f"backend {name}: {BACKENDS.entries[name]} lacks "
                        f"{', '.join(m for m in members if not hasattr(module, m))} (search.backends.Backend)")
    return module
