"""What a trial is scored on, and which way is better. Everything but accuracy is computed on
the driver from layer descriptors alone, before any training."""
from __future__ import annotations

import math
from typing import Literal, Sequence

from spaces import Layer
from spaces.precision import FLOAT_BITS, ONNX_INT32_BIAS_BITS, integer_kernel, storage_bits

DIRECTIONS: dict[str, Literal["minimize", "maximize"]] = {"accuracy": "maximize", "latency_ms": "minimize", "size_kb": "minimize", "peak_memory_kb": "minimize"}
BUDGETS = ("latency_ms", "size_kb", "peak_memory_kb")


# What each export format's file holds besides the tensors `size_kb` counts: nodes, names, quantization parameters
# of the activations, metadata. Fitted by `scripts/fit_file_size.py --file F` on exports of 11 networks at two
# input sizes (float, uniform 8-bit, 6 random mixes, 3 of them also all-float; batch norm as training leaves it);
# within 2.8 % (ONNX) and 1.4 % (.tflite, mixes of 5-8 and 32 bits) of every file.
GRAPH_BYTES = {
    "onnx": {"file": 56, "float_layer": 551, "quantized_layer": 897, "precision_change": 77},
    "litert": {"file": 74, "float_layer": 901, "quantized_layer": 1032, "precision_change": 315},
}


def size_kb(layers: Sequence[Layer], file: str) -> float:
    """Predicted size of the file a network exports to (`file`: a search.backends name, the format the target
    runs). Both formats store every weight densely at its storage width (int4 two a byte, int8, int16, float32;
    unstructured zeros are zeros, not missing), a 32-bit bias per output channel, and per quantized layer a
    float32 scale and a zero point per output channel: at the weights' width in ONNX; int64 in a .tflite
    (TFLite's QuantizationParameters). An int32 bias has its own scale and zero point per channel (in ONNX, at
    `ONNX_INT32_BIAS_BITS` only). The graph is
    `GRAPH_BYTES[file]`: a cost per layer, and per change between float, integer-kernel and dequantized layers
    along the network, where (de)quantize pairs sit."""
    graph = GRAPH_BYTES[file]
    total = graph["file"]
    kinds = []
    for layer in layers:
        width, channels = storage_bits(layer.bits), layer.out_shape[0]
        if width == FLOAT_BITS:
            total += 4 * layer.weights + graph["float_layer"]
            kinds.append("float")
        else:
            # ONNX: zero points at the weights' width; TFLite: int64, and its int32 bias carries a scale and a
            # zero point per channel too
            params = 24 * channels if file == "litert" else 4 * channels + -(-channels * width // 8)
            if file == "onnx" and layer.bits in ONNX_INT32_BIAS_BITS:
                params += 8 * channels  # its int32 bias's scale and zero point
            total += -(-layer.weights * width // 8) + params + graph["quantized_layer"]
            kinds.append("integer" if integer_kernel(layer.bits) else "dequantized")
        total += 4 * channels  # bias (batch norm folded into it)
    total += graph["precision_change"] * sum(a != b for a, b in zip(kinds, kinds[1:]))
    return total / 1024


def peak_memory_kb(layers: Sequence[Layer], file: str) -> float:
    """Weights plus the largest pair of live activations: a layer's input (at its bit-width)
    and its output (at the bit-width of the layer that reads it; float for the last).
    Residual tensors held across a block are not counted."""
    live = 0.0
    for layer, reader in zip(layers, [*layers[1:], None]):
        out_bits = reader.bits if reader else 32
        live = max(live, math.prod(layer.in_shape) * layer.bits + math.prod(layer.out_shape) * out_bits)
    return size_kb(layers, file) + live / 8 / 1024


def metrics(layers: Sequence[Layer], latency_ms: float, file: str) -> dict[str, float]:
    """Every driver-side number a trial records; sizes are of the file the target runs (`file`)."""
    return {"latency_ms": latency_ms, "size_kb": size_kb(layers, file), "peak_memory_kb": peak_memory_kb(layers, file),
            "macs": float(sum(l.macs for l in layers)), "params": float(sum(l.params for l in layers))}
