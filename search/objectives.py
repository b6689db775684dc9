"""What a trial is scored on, and which way is better. Everything but accuracy is computed on
the driver from layer descriptors alone, before any training."""
from __future__ import annotations

import math
from typing import Sequence

from spaces import Layer
from spaces.precision import FLOAT_BITS, integer_kernel, storage_bits

DIRECTIONS = {"accuracy": "maximize", "latency_ms": "minimize", "size_kb": "minimize", "peak_memory_kb": "minimize"}
BUDGETS = ("latency_ms", "size_kb", "peak_memory_kb")


# What the ONNX file holds besides the tensors `size_kb` counts: nodes, names, quantization parameters of the
# activations and the layer metadata. Fitted by scripts/fit_file_size.py on exports of 11 networks at two input
# sizes (float, uniform 8-bit, 6 random mixes, 3 of them also all-float): within 4.2 % of every file.
GRAPH_BYTES = {"file": 27, "float_layer": 295, "quantized_layer": 407, "precision_change": 435}


def size_kb(layers: Sequence[Layer]) -> float:
    """Predicted size of the exported ONNX file (`search.backends.onnx`), which stores every weight densely at
    its storage width (int4 two a byte, int8, int16, float32; unstructured zeros are zeros, not missing), a
    float32 bias per output channel, per quantized layer a float32 scale and an integer zero point per output
    channel, and the graph (`GRAPH_BYTES`: a cost per layer, and per change between float, integer-kernel and
    dequantized layers along the network, where quantize/dequantize pairs sit)."""
    total = GRAPH_BYTES["file"]
    kinds = []
    for layer in layers:
        width, channels = storage_bits(layer.bits), layer.out_shape[0]
        if width == FLOAT_BITS:
            total += 4 * layer.weights + GRAPH_BYTES["float_layer"]
            kinds.append("float")
        else:
            total += -(-layer.weights * width // 8) + 4 * channels + -(-channels * width // 8)
            total += GRAPH_BYTES["quantized_layer"]
            kinds.append("integer" if integer_kernel(layer.bits) else "dequantized")
        total += 4 * channels  # bias (batch norm folded into it)
    total += GRAPH_BYTES["precision_change"] * sum(a != b for a, b in zip(kinds, kinds[1:]))
    return total / 1024


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
