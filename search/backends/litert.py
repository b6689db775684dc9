"""The LiteRT backend: a trained network of any space as one `.tflite` file for LiteRT (TensorFlow Lite), the
runtime Android phones run, on its XNNPACK CPU kernels.

The file is the network's plain form (`spaces.fold.deployable`, as for ONNX) converted by litert_torch's PT2E
lowering, which maps the network's own frozen quantize/dequantize ops to the file's: every `dequantize -> layer
-> quantize` chain of an integer layer becomes an int8 kernel, a float layer keeps a float kernel with
DEQUANTIZE/QUANTIZE at its borders (the converter in strict QDQ mode: `_strict_qdq`). Nothing is calibrated, so
the file computes what the trial scored, up to the integer kernels' own rounding (int32 bias, fixed-point
rescaling: +-1 step per requantization).

What TFLite can hold on XNNPACK decides what this backend refuses, naming the layer: a 9-16-bit layer (TFLite's
16-bit activations are symmetric, the network's are not) and a 2-4-bit one (the network runs it as dequantize +
float kernel, `spaces.precision.integer_kernel`; the converter turns that into an int8 kernel on a weight grid
of its own, and a float kernel on dequantized int8 weights does not load on XNNPACK). A 5-8-bit layer runs an
int8 kernel, its input shifted from the network's uint8 grid to the same grid in int8 (zero point - 128) and its
weights stored in int8 on their own grid.

The graph reads "input" (float32, 1 x C x H x W, normalised like the training data: phones run one image at a
time) and writes "logits" (float32). When the first layer is quantized the file's input is int8 and its output
may be too: `outputs` and the runner quantize and dequantize with the file's own parameters, as an app must.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from spaces.fold import FoldedLayer, deployable
from spaces.precision import activation_storage_bits, integer_kernel
from spaces.quantize import QuantizeDequantize

from . import HOLDS
from .files import save_atomically

NAME = "litert"
SUFFIX = ".tflite"
GATE = "litert_min_agreement"  # promote's setting bounding the file's top-1 agreement with the network
Q = torch.ops.quantized_decomposed


class _Int8Activation(nn.Module):
    """A uint8 quantize/dequantize pair as int8: the same grid (zero point and range shifted by 128), the only
    activation type the converter writes a valid file for (a UINT8 tensor with an int8 zero point is refused)."""

    def __init__(self, q: QuantizeDequantize):
        super().__init__()
        self.args = (q.scale, q.zero_point - 128, q.qmin - 128, q.qmax - 128, torch.int8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Q.dequantize_per_tensor(Q.quantize_per_tensor(x, *self.args), *self.args)


class _Int8Weights(nn.Module):
    """A plain conv or linear layer whose weights (already on their b-bit grid) pass through per-channel int8
    quantize/dequantize ops, so the converter stores them as integers and fuses an int8 kernel. The scales are
    buffers: the converter needs them as constants of the graph."""

    scale: torch.Tensor
    zero: torch.Tensor

    def __init__(self, layer: nn.Conv2d | nn.Linear, bits: int):
        super().__init__()
        self.layer, self.qmax = layer, 2 ** (bits - 1) - 1
        w = layer.weight.detach()
        self.register_buffer("scale", w.abs().amax(dim=tuple(range(1, w.dim()))).clamp_min(1e-12) / self.qmax)
        self.register_buffer("zero", torch.zeros(w.shape[0], dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = (self.scale, self.zero, 0, -self.qmax, self.qmax, torch.int8)
        w = Q.dequantize_per_channel(Q.quantize_per_channel(self.layer.weight, *args), *args)
        c = self.layer
        if isinstance(c, nn.Linear):
            return nn.functional.linear(x, w, c.bias)
        return nn.functional.conv2d(x, w, c.bias, c.stride, c.padding, c.dilation, c.groups)


def expressible(folded: dict[str, FoldedLayer]) -> None:
    """ValueError naming the first layer whose precision a `.tflite` file cannot hold (see the module docstring)."""
    for name, layer in folded.items():
        if layer.bits not in HOLDS[NAME]:
            raise ValueError(f"layer {name!r}: {layer.bits} bits cannot be expressed in a .tflite file that runs on "
                             "XNNPACK (LiteRT backend: 5-8 or 32 bits per layer)")


def plain(net: nn.Module, input_shape: tuple[int, int, int]) -> tuple[nn.Module, dict[str, FoldedLayer]]:
    """The network as the converter reads it (`spaces.fold.deployable` with int8 activations and weights), and
    its layers by name."""
    model, folded = deployable(net, input_shape)
    expressible(folded)
    paths = dict(model.named_modules())
    replace: dict[str, nn.Module] = {}
    for path, m in paths.items():
        if isinstance(m, QuantizeDequantize):
            if activation_storage_bits(m.bits) != 8:  # an op's quantizer; layers were checked above
                raise ValueError(f"quantizer {path!r}: {m.bits}-bit activations cannot be expressed in a .tflite file")
            replace[path] = _Int8Activation(m)
    for layer in folded.values():
        if integer_kernel(layer.bits):
            replace[layer.path] = _Int8Weights(cast("nn.Conv2d | nn.Linear", paths[layer.path]), layer.bits)
    for path, new in replace.items():
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    return model.eval(), folded


def export(net: nn.Module, input_shape: tuple[int, int, int], path: str | Path) -> Path:
    """Write `net` (any space's network, its quantizers' ranges observed) as one `.tflite` file at `path`.
    ValueError names a quantizer that never observed a range or a layer whose bits the file cannot hold."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {shape!r}")
    model, _ = plain(net, shape)
    with _quiet():  # importing the converter loads TensorFlow, whose start-up lines go to fd 2
        litert_torch, config = _converter()
    with _quiet(), _strict_qdq(), torch.no_grad():
        edge = litert_torch.convert(model, (torch.zeros(1, *shape),), quant_config=config)

    def write(tmp: str) -> None:
        edge.export(tmp)
        outputs(tmp, np.zeros((1, *shape), np.float32))  # it loads and runs, or nothing is moved into place

    with _quiet():
        path = save_atomically(Path(path), write)
    return path


def reference(net: nn.Module, input_shape: tuple[int, int, int]) -> nn.Module:
    """The network itself: the file's integer kernels requantize their own way (XNNPACK's rounding, which differs
    between CPUs), which nothing here simulates; the gate bounds it (`GATE`)."""
    return net


def audit(path: str | Path, net: nn.Module, input_shape: tuple[int, int, int]) -> list[str]:
    """Each kernel's weights, bias, scales and grids against the network's plan (`litert_audit`)."""
    from .litert_audit import audit as against_plan  # it reads files with this module's interpreter

    return against_plan(path, net, input_shape)


def layer_errors(net: nn.Module, path: str | Path, x: np.ndarray) -> dict[str, float]:
    """None to show: XNNPACK runs the graph as fused kernels whose intermediate outputs are not readable tensors."""
    return {}


def interpreter(path: str | Path, threads: int = 1, xnnpack: bool = True):
    """LiteRT's interpreter on `path`, tensors allocated; with XNNPACK (its default CPU delegate) or without."""
    from ai_edge_litert import interpreter as litert

    kind = (litert.OpResolverType.AUTO if xnnpack
            else litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    with _quiet():
        it = litert.Interpreter(model_path=str(path), num_threads=threads, experimental_op_resolver_type=kind)
        it.allocate_tensors()
    return it


def delegated(it) -> int:
    """How many parts of the graph XNNPACK runs (DELEGATE nodes; 1: all of it, when nothing fell off)."""
    return sum(op["op_name"] == "DELEGATE" for op in it._get_ops_details())


class Runner:
    """Feeds float images to a file one at a time and reads float logits, (de)quantizing its int8 input and
    output with the file's own parameters."""

    def __init__(self, path: str | Path, threads: int = 1, xnnpack: bool = True):
        self.it = interpreter(path, threads, xnnpack)
        self.input, self.output = self.it.get_input_details()[0], self.it.get_output_details()[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits of one image (1 x C x H x W float32)."""
        self.it.set_tensor(self.input["index"], _to(x, self.input))
        self.it.invoke()
        return _from(self.it.get_tensor(self.output["index"]), self.output)


def outputs(path: str | Path, x: np.ndarray) -> np.ndarray:
    """The file's logits for the batch `x`, as LiteRT runs it on XNNPACK (one image per invoke)."""
    run = Runner(path)
    return np.concatenate([run(x[i:i + 1]) for i in range(len(x))])


def _to(x: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return np.ascontiguousarray(x, np.float32)
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(detail["dtype"])


def _from(y: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return y.copy()
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def _converter():
    """litert_torch and the static PT2E config (it makes the converter map q/dq chains to int8 kernels; no
    observer runs: the network's own quantize/dequantize ops are used as they are)."""
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao's import-time enum warning
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer, quant_config

    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
    return litert_torch, quant_config.QuantConfig(pt2e_quantizer=quantizer)


@contextlib.contextmanager
def _strict_qdq():
    """The converter in strict QDQ mode: only what the graph's own quantize/dequantize ops quantize becomes
    integer. litert-torch 0.10 leaves the mode off (its newer converter sets it), and then a float layer between
    int8 layers (dequantize -> conv -> quantize) is turned into an int8 kernel on weights the converter quantizes
    itself: a file that is not the trial's network, and that runs int8 where the trial chose float. The mode is
    set on the config litert-torch builds, for the duration of one conversion."""
    from unittest import mock

    from litert_torch._convert.litert_converter import converter_api_ext as api

    make = api.ConvertToTFLConfig

    def strict():
        config = make()
        config.strict_qdq_mode = True
        return config

    with mock.patch.object(api, "ConvertToTFLConfig", strict):
        yield


@contextlib.contextmanager
def _quiet():
    """TFLite's C++ logging ("Created TensorFlow Lite XNNPACK delegate") writes to fd 2 directly."""
    import sys
    import warnings

    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
