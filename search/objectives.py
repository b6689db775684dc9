"""What a trial is scored on, and which way is better. Everything but accuracy is computed on
the driver from layer descriptors alone, before any training."""
from __future__ import annotations

import math
from typing import Sequence

from spaces import Layer
from spaces.quantize import FLOAT_BITS

DIRECTIONS = {"accuracy": "maximize", "latency_ms": "minimize", "size_kb": "minimize", "peak_memory_kb": "minimize"}
BUDGETS = ("latency_ms", "size_kb", "peak_memory_kb")
BIAS_BITS = 32  # biases (with batch norm folded in) stay 32-bit, as in int8 runtimes
SCALE_BITS = 32  # a quantization scale


def size_kb(layers: Sequence[Layer]) -> float:
    """Stored size: non-zero weights at their bit-width, plus a 1-bit-per-weight mask where
    unstructured sparsity needs one to say which weights are zero, plus 32-bit biases, plus for a
    quantized layer the 32-bit scales per output channel of its weights and of its bias (what the
    exported file stores for them: on a small network they are a tenth of it)."""
    bits = 0
    for layer in layers:
        bits += layer.nonzero_weights * layer.bits + layer.out_shape[0] * BIAS_BITS
        if layer.bits < FLOAT_BITS:
            bits += layer.out_shape[0] * SCALE_BITS * 2
        if layer.granularity == "weight" and layer.sparsity > 0:
            bits += layer.weights
    return bits / 8 / 1024


def peak_memory_kb(layers: Sequence[Layer]) -> float:
    """Weights plus the largest pair of live activations: a layer's input (at its bit-width)
    and its output (at the bit-width of the layer that reads it; float for the last).
    Residual tensors held across a block are not counted."""
    live = 0.0
    for layer, reader in zip(layers, [*layers[1:], None]):
        out_bits = reader.bits if reader else 32
        live = max(live, math.prod(layer.in_shape) * layer.bits + math.prod(layer.out_shape) * out_bits)
    return size_kb(layers) + live / 8 / 1024


def metrics(layers: Sequence[Layer], latency_ms: float) -> dict[str, float]:
    """Every driver-side number a trial records."""
    return {"latency_ms": latency_ms, "size_kb": size_kb(layers), "peak_memory_kb": peak_memory_kb(layers),
            "macs": float(sum(l.macs for l in layers)), "params": float(sum(l.params for l in layers))}
