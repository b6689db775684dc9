"""Export backends: a trained network of any space becomes one deployable file for one runtime.

A backend is a module with `NAME`, `SUFFIX`, `export(net, input_shape, path) -> Path` (the file computes what
the fake-quantized network computed: `spaces.fold`) and `outputs(path, x) -> logits` (the runtime running
it), registered in `BACKENDS` (a `spaces.registry.Registry`: imported only when asked for, so one backend's
dependencies never load with another's).
"""
from __future__ import annotations

from types import ModuleType

from spaces.precision import BITS, FLOAT_BITS, integer_kernel
from spaces.registry import Registry

BACKENDS = Registry("backend", {"onnx": "search.backends.onnx", "litert": "search.backends.litert"})

# The precisions each format's file can hold, torch-free (a config is narrowed by them before anything loads): a
# target's `file` narrows the space's bit-widths to its format's. ONNX holds every one (int4/int8/int16 storage);
# a .tflite that runs on XNNPACK holds 5-8 bits (int8 kernels) and float, nothing else (see backends/litert.py).
HOLDS = {"onnx": BITS, "litert": tuple(b for b in BITS if b == FLOAT_BITS or integer_kernel(b))}


def get(name: str) -> ModuleType:
    """The backend registered as `name` (ValueError names the choices)."""
    return BACKENDS.load(name)
