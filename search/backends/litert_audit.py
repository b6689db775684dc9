"""Does a `.tflite` file hold the network's precision plan? Each layer's kernel, dtypes, weights, scales and zero
points read out of the file and compared with what the plan says they must be.

Why a structural check and not only agreement: an int8 kernel requantizes with its own rounding (int32 bias,
fixed-point or fp32 rescaling), so a correct file flips a prediction now and then where the network's top two
logits are close, and how many flip depends on the network, not on the file being right. The defects that make a
file wrong (a weight scale, an activation scale or a zero point off; a quantize point missing, so a kernel runs on
a grid of its own; a float layer made integer, as litert-torch does outside strict QDQ mode) are exact facts
about the file, and this check finds them the same way on every CPU.

Kernels are matched to the plan's layers in network order (the converter keeps it); a file with other kernels, or
in another order, is reported as such.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast, overload

import numpy as np
import torch
from torch import nn

from .litert import _Int8Activation, _Int8Weights, interpreter, plain

KERNELS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
RTOL = 1e-5  # the file stores float32 scales; the plan computes them in float64 or float32: ~1e-7 apart


@dataclass(frozen=True)
class Layer:
    """One layer as the plan says the file must hold it."""

    name: str
    weight: np.ndarray  # the float weights it computes with (OIHW or OI)
    bias: np.ndarray | None
    weight_scales: np.ndarray | None  # per output channel; None for a float layer
    input: tuple[float, int] | None  # int8 (scale, zero point) of its input; None for a float layer

    @property
    def integer(self) -> bool:
        return self.weight_scales is not None


def plan(net: nn.Module, input_shape: tuple[int, int, int]) -> tuple[list[Layer], set[tuple[float, int]]]:
    """The layers in network order, and every int8 activation grid (scale, zero point) the network quantizes to.
    An integer layer's input grid is that of the quantizer whose output it reads (its own, or the one its
    integer predecessor writes to), found by running the converter's network once."""
    model, folded = plain(net, input_shape)
    written: dict[int, tuple[float, int]] = {}  # id of a quantizer's output -> its grid
    read: dict[nn.Module, tuple[float, int] | None] = {}
    hooks = [m.register_forward_hook(lambda m, args, out: written.__setitem__(id(out), m.args[:2]))
             for m in model.modules() if isinstance(m, _Int8Activation)]
    hooks += [m.register_forward_pre_hook(lambda m, args: read.__setitem__(m, written.get(id(args[0]))))
              for m in model.modules() if isinstance(m, _Int8Weights)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    layers = []
    for name, f in folded.items():
        m = model.get_submodule(f.path)
        if isinstance(m, _Int8Weights):
            if read.get(m) is None:
                raise ValueError(f"layer {name!r}: an integer layer whose input no quantizer writes")
            layers.append(Layer(name, _np(m.layer.weight), _np(m.layer.bias), _np(m.scale), read[m]))
        else:
            c = cast("nn.Conv2d | nn.Linear", m)  # a float layer, as `plain` left it
            layers.append(Layer(name, _np(c.weight), _np(c.bias), None, None))
    grids = {m.args[:2] for m in model.modules() if isinstance(m, _Int8Activation)}
    return layers, grids


def audit(path: str | Path, net: nn.Module, input_shape: tuple[int, int, int]) -> list[str]:
    """What in the file at `path` differs from `net`'s precision plan, one line per finding naming the layer or
    the grid; empty when the file holds the plan."""
    layers, grids = plan(net, input_shape)
    it = interpreter(path, xnnpack=False)  # every op visible
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    kernels = [op for op in ops if op["op_name"] in KERNELS]
    if len(kernels) != len(layers):
        return [f"the file has {len(kernels)} conv/linear kernels, the network {len(layers)} layers"]
    producer = {i: op for op in ops for i in op["outputs"]}

    def stored(i: int) -> int:
        """The tensor a DEQUANTIZE op reads, for one it writes: an integer layer whose output is float (the
        logits) is written as DEQUANTIZE -> float kernel, the same arithmetic up to rounding."""
        op = producer.get(i)
        return op["inputs"][0] if op is not None and op["op_name"] == "DEQUANTIZE" else i

    problems = []
    for layer, op in zip(layers, kernels):
        ins = [stored(op["inputs"][0]) if layer.integer else op["inputs"][0], stored(op["inputs"][1]),
               *op["inputs"][2:]]
        problems += [f"layer {layer.name!r}: {p}" for p in _kernel(layer, op | {"inputs": ins}, tensors, it)]
    problems += _grids(grids, ops, tensors)
    return problems


def _kernel(layer: Layer, op: dict, tensors: dict, it) -> list[str]:
    x, w = tensors[op["inputs"][0]], tensors[op["inputs"][1]]
    y = tensors[op["outputs"][0]]
    bias = tensors[op["inputs"][2]] if len(op["inputs"]) > 2 and op["inputs"][2] >= 0 else None
    want = _layout(layer.weight, op["op_name"])
    if tuple(w["shape"]) != want.shape:
        return [f"{op['op_name']} weights of shape {tuple(int(d) for d in w['shape'])}, the plan's are {want.shape}"]
    kind = "int8" if layer.integer else "float32"
    found = {"input": x["dtype"], "weights": w["dtype"]}
    if not layer.integer or np.dtype(y["dtype"]) != np.float32:  # an integer layer may write float logits
        found["output"] = y["dtype"]
    wrong = [f"{k} {np.dtype(d).name}" for k, d in found.items() if np.dtype(d).name != kind]
    if wrong:
        return [f"the plan runs it as a {kind} kernel; the file has {', '.join(wrong)}"]
    values = it.get_tensor(w["index"]).astype(np.float64)
    if not layer.integer:
        if not np.allclose(values, want, rtol=0, atol=1e-6 * max(float(np.abs(want).max()), 1e-12)):
            return ["float weights differ from the network's"]
        return []
    problems = []
    q = w["quantization_parameters"]
    scales, zeros = np.asarray(q["scales"], np.float64), np.asarray(q["zero_points"])
    assert layer.weight_scales is not None
    if len(scales) != len(layer.weight_scales) or not np.allclose(scales, layer.weight_scales, rtol=RTOL, atol=0):
        problems.append("weight scales differ from the network's")
    elif np.any(zeros != 0):
        problems.append("weight zero points are not 0")
    else:
        grid = np.expand_dims(scales, tuple(d for d in range(values.ndim) if d != q["quantized_dimension"]))
        if np.any(np.abs(values * grid - want) > 0.25 * grid):
            problems.append("int8 weights differ from the network's grid")
    xq = x["quantization_parameters"]
    if not _same_grid((xq["scales"], xq["zero_points"]), layer.input):
        assert layer.input is not None
        problems.append(f"input grid {_grid(xq)}, the network quantizes it to scale {layer.input[0]:.6g} "
                        f"zero point {layer.input[1]}")
    assert layer.input is not None
    step = layer.input[0] * scales  # the int32 bias grid
    if bias is not None and layer.bias is not None and not problems and np.dtype(bias["dtype"]) == np.float32:
        if np.any(np.abs(it.get_tensor(bias["index"]) - layer.bias) > 0.5 * step + 1e-6 * np.abs(layer.bias)):
            problems.append("bias differs from the network's by more than its int32 rounding")
    elif bias is not None and layer.bias is not None and not problems:
        bq = bias["quantization_parameters"]
        bscale = np.asarray(bq["scales"], np.float64)
        if not np.allclose(bscale, step, rtol=RTOL, atol=0):
            problems.append("bias scales are not input scale x weight scales")
        elif np.any(np.abs(it.get_tensor(bias["index"]) * bscale - layer.bias) > 0.5 * bscale + 1e-6 * np.abs(layer.bias)):
            problems.append("int32 bias differs from the network's bias")
    return problems


def _grids(grids: set[tuple[float, int]], ops: list[dict], tensors: dict) -> list[str]:
    """Every int8 activation of the file on one of the network's grids, and every grid of the network in the file."""
    activations = {i for op in ops for i in op["outputs"]}
    seen, problems = [], []
    for i in sorted(activations):
        t = tensors[i]
        if np.dtype(t["dtype"]) != np.int8:
            continue
        q = t["quantization_parameters"]
        seen.append(q)
        if not any(_same_grid((q["scales"], q["zero_points"]), g) for g in grids):
            problems.append(f"activation {_short(t['name'])!r}: grid {_grid(q)} is none of the network's")
    for g in sorted(grids):
        if not any(_same_grid((q["scales"], q["zero_points"]), g) for q in seen):
            problems.append(f"the network quantizes to scale {g[0]:.6g} zero point {g[1]}; no tensor of the file does "
                            "(a quantize point is missing)")
    return problems


def _same_grid(q: tuple, grid: tuple[float, int] | None) -> bool | np.bool_:
    scales, zeros = q
    return (grid is not None and len(scales) == 1 and len(zeros) == 1 and int(zeros[0]) == grid[1]
            and np.isclose(float(scales[0]), grid[0], rtol=RTOL, atol=0))


def _grid(q: dict) -> str:
    if len(q["scales"]) != 1:
        return f"with {len(q['scales'])} scales"
    return f"scale {float(q['scales'][0]):.6g} zero point {int(q['zero_points'][0])}"


def _layout(w: np.ndarray, op_name: str) -> np.ndarray:
    """Torch's OIHW / OI weights in the file's layout: OHWI for CONV_2D, 1HWO for DEPTHWISE_CONV_2D."""
    w = w.astype(np.float64)
    if op_name == "CONV_2D":
        return w.transpose(0, 2, 3, 1)
    if op_name == "DEPTHWISE_CONV_2D":
        return w.transpose(1, 2, 3, 0)
    return w


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1][:60]


@overload
def _np(t: torch.Tensor) -> np.ndarray: ...


@overload
def _np(t: torch.Tensor | None) -> np.ndarray | None: ...


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().double().cpu().numpy()
