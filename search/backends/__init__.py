"""Export backends: a trained network of any space becomes one deployable file for one runtime.

A backend is a module with `NAME`, `SUFFIX`, `export(net, input_shape, path) -> Path` (the file computes what
the fake-quantized network computed: `spaces.fold`) and `outputs(path, x) -> logits` (the runtime running
it), registered in `BACKENDS` (a `spaces.registry.Registry`: imported only when asked for, so one backend's
dependencies never load with another's).
"""
from __future__ import annotations

from types import ModuleType

from spaces.registry import Registry

BACKENDS = Registry("backend", {"onnx": "search.backends.onnx", "litert": "search.backends.litert"})


def get(name: str) -> ModuleType:
    """The backend registered as `name` (ValueError names the choices)."""
    return BACKENDS.load(name)
