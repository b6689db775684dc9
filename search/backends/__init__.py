"""Export backends: a trained network of any space becomes one deployable file for one runtime.

A backend is a module with `NAME`, `SUFFIX`, `export(net, input_shape, path) -> Path` (the file computes what
the fake-quantized network computed: `spaces.fold`) and `outputs(path, x) -> logits` (the runtime running
it). Each is imported only when asked for, so one backend's dependencies never load with another's.
"""
from __future__ import annotations

from types import ModuleType


def _onnx() -> ModuleType:
    from . import onnx

    return onnx


def _litert() -> ModuleType:
    from . import litert

    return litert


BACKENDS = {"onnx": _onnx, "litert": _litert}


def get(name: str) -> ModuleType:
    """The backend registered as `name` (ValueError names the choices)."""
    if name not in BACKENDS:
        raise ValueError(f"backend: one of {', '.join(BACKENDS)}, got {name!r}")
    return BACKENDS[name]()
