"""Any network as the layer descriptors a latency predictor reads (`spaces.Layer`), so that a published or a
user's network can be a measurement row or a prediction, not only the networks a space generates.

Three sources: a torch module (run once on a zero image, each conv and linear layer read by a hook, residual
adds read from its torch.fx graph), an ONNX file (its Conv / QLinearConv / Gemm / MatMul nodes with shapes from
ONNX's shape inference, quantized where the weights pass through DequantizeLinear from 8 bits or fewer) and a
`.tflite` file (its CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED ops). And builders, by name, for the families
published phone latencies cover: torchvision's `mobilenet_v2`, `mobilenet_v3_large`, `mobilenet_v3_small` and
`mnasnet` at any width, and MobileNetV1 (not in torchvision: written here, as TF-slim defines it), built without
weights (nothing is downloaded).

What a descriptor does not hold, and so no predictor prices: pooling, squeeze-excite's multiply, activation
kinds (hard-swish costs more than ReLU), channel shuffles and concatenations. A network whose cost is mostly in
such ops is described poorly; one made of other layer kinds (attention, recurrent cells) cannot be described.
"""
from __future__ import annotations

import math
import operator
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from spaces import Layer
from spaces.fold import trace
from spaces.precision import FLOAT_BITS

SUPPORTED = ".onnx, .tflite, or a builder: " + ", ".join(
    ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "mnasnet"])


class DescribeError(ValueError):
    """A network this module cannot turn into layers: the message names the file, node or op."""


def from_module(module: nn.Module, input_shape: tuple[int, int, int]) -> list[Layer]:
    """Every conv and linear layer of `module`, in the order they run on a (1, *input_shape) zero image."""
    module = module.eval()
    names = {m: n for n, m in module.named_modules()}
    adds = _residual_ends(module)
    layers = []
    for m, r in trace(module, torch.zeros(1, *input_shape)).items():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        x, out = r["input"], r["output"]
        bits = int(getattr(m, "bits", FLOAT_BITS))  # a fake-quantized layer of a space knows its bits
        residual = None if adds is None else names[m] in adds
        if isinstance(m, nn.Conv2d):
            layers.append(Layer(names[m], "conv", tuple(x.shape[1:]), tuple(out.shape[1:]), m.kernel_size[0],
                                m.stride[0], m.groups, bits, residual=residual))
        else:
            layers.append(Layer(names[m], "linear", (x.shape[-1], 1, 1), (out.shape[-1], 1, 1), bits=bits,
                                residual=residual))
    return layers


def _residual_ends(module: nn.Module) -> set[str] | None:
    """Names of the layers whose output (through batch norm and activations) is added to an earlier tensor; None
    when the module cannot be traced (then predictors guess the adds from shapes)."""
    from torch import fx

    try:
        graph = fx.symbolic_trace(module).graph
    except Exception:  # noqa: BLE001: a module torch.fx cannot trace is still described, adds guessed
        return None
    modules = dict(module.named_modules())
    order = {node: i for i, node in enumerate(graph.nodes)}
    ends = set()
    for node in graph.nodes:
        if node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add):
            layers = []
            for arg in node.args[:2]:
                # walk back through single-input modules (batch norm, activations) to a conv or linear layer
                while isinstance(arg, fx.Node) and arg.op == "call_module" and not isinstance(
                        modules[arg.target], (nn.Conv2d, nn.Linear)) and len(arg.all_input_nodes) == 1:
                    arg = arg.all_input_nodes[0]
                if isinstance(arg, fx.Node) and arg.op == "call_module":
                    layers.append(arg)
            if layers:  # the later of the two ends the block; the other wrote the block's input
                ends.add(str(max(layers, key=lambda node: order[node]).target))
    return ends


def from_onnx(path: str | Path) -> list[Layer]:
    """The conv and linear layers of an ONNX file, in graph order."""
    import onnx
    from onnx import numpy_helper, shape_inference

    try:
        model = shape_inference.infer_shapes(onnx.load(str(path)))
    except Exception as e:  # noqa: BLE001: onnx raises several kinds for a file that is not a model
        raise DescribeError(f"{path}: not an ONNX model ({e})") from None
    g = model.graph
    shapes = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
              for v in [*g.input, *g.value_info, *g.output]}
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    for n in g.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)

    def source(name: str) -> tuple[np.ndarray | None, int]:
        """A weight tensor's values and bits: through DequantizeLinear (its integer type's width) if there is one."""
        node = producer.get(name)
        if node is not None and node.op_type == "DequantizeLinear":
            q = consts.get(node.input[0])
            return q, (8 if q is None else q.dtype.itemsize * 8)
        return consts.get(name), FLOAT_BITS

    layers = []
    for n in g.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type in ("Conv", "QLinearConv"):
            x, w_name, y = (n.input[0], n.input[3], n.output[0]) if n.op_type == "QLinearConv" else (
                n.input[0], n.input[1], n.output[0])
            w, bits = (consts.get(w_name), 8) if n.op_type == "QLinearConv" else source(w_name)
            if w is None or len(shapes.get(x, ())) != 4 or len(shapes.get(y, ())) != 4:
                raise DescribeError(f"{path}: node {n.name or n.output[0]!r} ({n.op_type}): weights or shapes unknown")
            layers.append(Layer(n.name or y, "conv", shapes[x][1:], shapes[y][1:], int(w.shape[-1]),
                                int(attrs.get("strides", [1])[0]), int(attrs.get("group", 1)), bits))
        elif n.op_type in ("Gemm", "MatMul"):
            w, bits = source(n.input[1])
            if w is None or w.ndim != 2:
                continue  # a product of two activations: not a layer with weights
            out = w.shape[0] if attrs.get("transB", 0) else w.shape[1]
            cin = w.shape[1] if attrs.get("transB", 0) else w.shape[0]
            layers.append(Layer(n.name or n.output[0], "linear", (int(cin), 1, 1), (int(out), 1, 1), bits=bits))
    if not layers:
        raise DescribeError(f"{path}: no Conv, QLinearConv, Gemm or MatMul node with weights")
    return layers


def from_tflite(path: str | Path) -> list[Layer]:
    """The conv and linear layers of a `.tflite` file, in op order (strides from the shapes, padding SAME)."""
    from .backends import litert

    try:
        it = litert.interpreter(path, xnnpack=False)
    except (RuntimeError, ValueError) as e:
        raise DescribeError(f"{path}: not a .tflite model LiteRT can load ({e})") from None
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    producer = {o: op for op in it._get_ops_details() for o in op["outputs"]}
    layers = []
    for op in it._get_ops_details():
        kind = op["op_name"]
        if kind not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        x_index = op["inputs"][0]
        if x_index in producer and producer[x_index]["op_name"] == "PAD":  # explicit padding: the layer's input
            x_index = producer[x_index]["inputs"][0]                       # is the unpadded tensor
        x, y = tensors[x_index], tensors[op["outputs"][0]]
        w_index = op["inputs"][1]
        if w_index in producer and producer[w_index]["op_name"] == "DEQUANTIZE":
            w_index = producer[w_index]["inputs"][0]
        w = tensors[w_index]
        bits = FLOAT_BITS if np.dtype(w["dtype"]) == np.float32 else 8
        name = w["name"].rsplit("/", 1)[-1] or str(op["index"])
        if kind == "FULLY_CONNECTED":
            layers.append(Layer(name, "linear", (int(w["shape"][1]), 1, 1), (int(w["shape"][0]), 1, 1), bits=bits))
            continue
        (_, h, wd, cin), (_, ho, wo, cout) = x["shape"], y["shape"]
        groups = cin if kind == "DEPTHWISE_CONV_2D" else 1
        layers.append(Layer(name, "conv", (int(cin), int(h), int(wd)), (int(cout), int(ho), int(wo)),
                            int(w["shape"][1]), math.ceil(int(h) / int(ho)), int(groups), bits))
    if not layers:
        raise DescribeError(f"{path}: no CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED op")
    return layers


def mobilenet_v1(width: float = 1.0, num_classes: int = 1001) -> nn.Module:
    """MobileNetV1 as TF-slim builds it: a 3x3 stride-2 stem and 13 depthwise-separable blocks, channels
    `max(int(c * width), 8)`, global pooling and a linear classifier."""
    def c(n: int) -> int:
        return max(int(n * width), 8)

    def unit(cin: int, cout: int, k: int, stride: int, groups: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()]

    blocks = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1)]
    layers, cin = unit(3, c(32), 3, 2, 1), c(32)
    for cout, stride in blocks:
        layers += unit(cin, cin, 3, stride, cin) + unit(cin, c(cout), 1, 1, 1)
        cin = c(cout)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))


def builders() -> dict[str, Callable[[float], nn.Module]]:
    """Network families by name, each a function of the width multiplier, built without weights."""
    from torchvision import models

    return {"mobilenet_v1": mobilenet_v1,
            "mobilenet_v2": lambda w: models.mobilenet_v2(weights=None, width_mult=w),
            "mobilenet_v3_large": lambda w: models.mobilenet_v3_large(weights=None, width_mult=w),
            "mobilenet_v3_small": lambda w: models.mobilenet_v3_small(weights=None, width_mult=w),
            "mnasnet": lambda w: models.MNASNet(alpha=w)}


def built(name: str, width: float = 1.0, resolution: int = 224) -> list[Layer]:
    """The layers of a named family at a width and an input resolution (3 channels)."""
    families = builders()
    if name not in families:
        raise DescribeError(f"model: {name!r} is none of {SUPPORTED}")
    return from_module(families[name](width), (3, resolution, resolution))


def describe(model: str, width: float = 1.0, resolution: int = 224) -> list[Layer]:
    """`model` as layers: a path ending in .onnx or .tflite, or a builder's name (with `width`, `resolution`)."""
    path = Path(model)
    if path.suffix in (".onnx", ".tflite"):
        if not path.is_file():
            raise DescribeError(f"model: no file {model}")
        return from_onnx(path) if path.suffix == ".onnx" else from_tflite(path)
    if path.suffix:
        raise DescribeError(f"model: {model}: a {path.suffix} file cannot be read; give {SUPPORTED}")
    return built(model, width, resolution)
