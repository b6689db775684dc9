"""Precision facts, in one place and without torch: which bit-widths exist, what integer type
stores each, and which run as integer kernels. The fake-quantized torch network, the exported
files and the latency predictors all read them from here.

"bits" of a layer covers its weights and its input activations; 32 means float.
"""
from __future__ import annotations

FLOAT_BITS = 32
BITS = (2, 3, 4, 5, 6, 7, 8, 16, FLOAT_BITS)  # what a space may offer
STORAGE = (4, 8, 16)  # the integer widths files store (ONNX int4/int8/int16)


def check(bits: int) -> int:
    """`bits` as a plain int; ValueError if it is not one of `BITS`."""
    if isinstance(bits, bool) or not isinstance(bits, int) and not hasattr(bits, "__index__"):
        raise ValueError(f"bits must be an integer, got {bits!r}")
    if int(bits) not in BITS:
        raise ValueError(f"bits must be 2..8, 16 or 32, got {bits}")
    return int(bits)


def storage_bits(bits: int) -> int:
    """The integer width that holds `bits`-bit weights (4, 8 or 16), or 32 for float."""
    bits = check(bits)
    return bits if bits == FLOAT_BITS else next(w for w in STORAGE if bits <= w)


def activation_storage_bits(bits: int) -> int:
    """The unsigned width that holds `bits`-bit activations: 8 up to 8 bits, 16 above, 32 for float.
    Not 4: onnxruntime 1.31's ClipQuantFusion aborts on a ReLU6 followed by a uint4 QuantizeLinear."""
    width = storage_bits(bits)
    return width if width == FLOAT_BITS else max(width, 8)


def integer_kernel(bits: int) -> bool:
    """5-8-bit layers are stored in int8 and run integer kernels, which read and write 8-bit
    tensors; every other precision runs as dequantize + float kernel."""
    return storage_bits(bits) == 8


# The bits at which an ONNX file keeps a layer's bias as int32, so that onnxruntime runs the layer as an integer
# kernel (a .tflite does at every `integer_kernel` width). Only full 8-bit grids: at 5-7 bits (int8/uint8 in the
# file too) the bias's rounding on the coarser grids moved predictions away from what the trial scored (measured:
# a mixed file with 6-bit integer layers disagreed with its unrounded network on 3 of 128 images, 0 without).
ONNX_INT32_BIAS_BITS = (8,)


def activation_range(bits: int) -> tuple[int, int]:
    """Integer range a `bits`-bit activation saturates at: its storage type's, not its own grid's,
    because that is what a runtime's QuantizeLinear/QUANTIZE does (a 6-bit grid stored in uint8
    saturates at 255)."""
    return 0, 2 ** activation_storage_bits(bits) - 1
