"""A deployable ONNX file from a trained network of any space: plain float layers, then per-layer precision.

`export` first turns the network into plain torch modules (`plain`): every conv with its batch norm folded in,
every linear layer as `nn.Linear`, weights multiplied by their sparsity mask (so unstructured zeros stay exact
zeros) and no slicing or fake-quantization ops. That float network goes through `torch.onnx.export` (the
dynamo exporter) into one self-contained file. If any layer has fewer than 32 bits and calibration images are
given, onnxruntime's static quantization then rewrites the file in QDQ format with each layer at its own precision.

Precision, per layer, as in `spaces.slim` ("bits" covers a layer's weights and its input activations):

- weights: symmetric, per output channel, values in [-(2^(b-1)-1), 2^(b-1)-1] with scale max|w|/(2^(b-1)-1),
  exactly torch's `quantize_weight` (per-channel symmetric scales commute with batch-norm folding);
- input activations: asymmetric, per tensor, unsigned, 2^b levels over [min(lo, 0), max(hi, 0)], exactly
  torch's `quantize_activation`. The range is the one the network observed (`act.lo/hi`, the range its accuracy
  was measured with) when `use_observed_ranges` and the layer has observed one, else the calibration data's.

ONNX storage types (what onnxruntime 1.31's CPU provider was measured to accept and run):

- 8 bits: int8 weights, uint8 activations. Fused into QLinearConv / QGemm / QLinearAdd: the fast path.
- 4 bits: int4 weights, activations on their 16-level grid stored in uint8. uint4 activations load and run too,
  but onnxruntime's ClipQuantFusion aborts session creation on a Clip followed by a uint4 (or int4)
  QuantizeLinear ("Unexpected data type for QuantizeLinear input y_zero_point of 21"), which every float ReLU6
  in front of a 4-bit layer produces; uint8 holds the same values.
- 16 bits: int16 weights, uint16 activations.
- 2, 3 bits (no ONNX type): stored like 4 bits, 5, 6, 7 bits: stored like 8 bits, each with its own b-bit
  scale, so the stored integers use only the b-bit grid ([-3, 3] in int4 for 3 bits, [-31, 31] in int8 for 6);
  only a value outside the calibrated range saturates at the wider type's limit instead of the b-bit one.
  5-7-bit layers run as int8 kernels.
4- and 16-bit layers (and 2-3-bit ones) run as DequantizeLinear + float Conv/Gemm: correct, not faster than
fp32; their biases stay float (an int32 bias at scale input_scale * weight_scale only serves integer kernels,
and at 2-4 bits it would be coarse).

Where precisions meet: a 32-bit layer is excluded from quantization and sees float weights and a float input
(no QuantizeLinear/DequantizeLinear on either), as in the fake-quantized torch network. Ops between layers
(residual Add, ReLU6, pooling) and the outputs of quantized layers (other than as the next layer's input, which
follows that layer's bits) are quantized only where every layer around them runs as an int8 kernel (5-8 bits),
at the whole uint8 range: that is what lets runtimes use integer
kernels (QLinearConv needs a quantized output), at the price of rounding a few values the fake-quantized network
keeps in float. Anywhere else they stay float, and a quantized layer whose output stays float runs as
DequantizeLinear + float op. A tensor read by several quantized layers with different bits takes the widest.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spaces.slim import SlimConv2d, SlimLinear

FLOAT_BITS = 32
STORAGE_BITS = (4, 8, 16)  # the integer widths ONNX stores (int4/uint4 since opset 21)
METADATA_KEY = "compression_search.layers"
INPUT_NAME, OUTPUT_NAME = "input", "logits"
_CALIBRATION_BATCH = 32


@dataclass(frozen=True)
class OnnxLayer:
    """Where a layer of the network lives in the ONNX graph."""

    name: str  # the layer's name in the network (`net.units()`), e.g. "b3.expand"
    node: str  # its Conv or Gemm node
    op_type: str
    weight: str  # the initializer holding its weights (int4/int8/int16 once quantized, else float)
    input: str  # the node's data input tensor (a DequantizeLinear output once quantized)
    bits: int  # the precision asked for (32: float)
    weight_type: str  # ONNX element type of the stored weights, e.g. "FLOAT", "INT8", "INT4"


def storage_bits(bits: int) -> int:
    """The ONNX integer width that holds `bits`-bit values (32 stays float)."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise ValueError(f"bits must be an integer, got {bits!r}")
    if bits == FLOAT_BITS:
        return FLOAT_BITS
    for width in STORAGE_BITS:
        if 2 <= bits <= width:
            return width
    raise ValueError(f"bits must be 2..16 or 32, got {bits}")


def activation_storage_bits(bits: int) -> int:
    """The ONNX integer width that holds `bits`-bit activations: uint8 up to 8 bits, uint16 up to 16.

    Not uint4 for 2-4 bits: onnxruntime 1.31 accepts and runs uint4 QuantizeLinear, but its ClipQuantFusion
    optimizer aborts session creation on a Clip (or Relu) followed by a uint4 QuantizeLinear ("Unexpected data type
    for QuantizeLinear input y_zero_point of 21"), which any float ReLU6 before a 4-bit layer produces. The values
    are the same: a 4-bit activation keeps its 16-level grid inside uint8."""
    width = storage_bits(bits)
    return width if width == FLOAT_BITS else max(width, 8)


# --- plain torch network -------------------------------------------------------------------------------------------


def layer_modules(net: nn.Module) -> dict[str, nn.Module]:
    """Layer name -> its conv or linear module: from `net.units()` where the network has it (a unit may wrap one
    conv with its batch norm), else every conv and linear module by its module path."""
    units = net.units() if callable(getattr(net, "units", None)) else None
    if units is None:
        return {name: m for name, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    out = {}
    for name, unit in units.items():
        inner = [m for m in unit.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        if len(inner) != 1:
            raise ValueError(f"layer {name!r} holds {len(inner)} conv/linear modules; expected exactly one")
        out[name] = inner[0]
    return out


def trace(model: nn.Module, x: torch.Tensor) -> dict[nn.Module, dict]:
    """Run `model` once on `x`, recording each conv, linear and batch-norm module's input and output tensors."""
    kinds = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)
    records: dict[nn.Module, dict] = {}
    handles = []

    def before(module, args):
        if module in records:
            raise ValueError(f"{type(module).__name__} module runs more than once in forward; cannot export it")
        records[module] = {"input": args[0]}

    def after(module, args, output):
        records[module]["output"] = output

    for m in model.modules():
        if isinstance(m, kinds):
            handles += [m.register_forward_pre_hook(before), m.register_forward_hook(after)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return records


def _conv_weight(conv: nn.Conv2d, cin: int) -> tuple[torch.Tensor, int]:
    """The weights the conv really uses for a `cin`-channel input (mask applied, slimmable slicing done)."""
    w, mask = conv.weight.detach(), getattr(conv, "mask", None)
    if mask is not None:
        w = w * mask
    if isinstance(conv, SlimConv2d):
        return (w[:cin], cin) if conv.depthwise else (w[: conv.out_active, :cin], 1)
    return w, conv.groups


def _plain_conv(conv: nn.Conv2d, cin: int, bn: nn.BatchNorm2d | None) -> nn.Conv2d:
    w, groups = _conv_weight(conv, cin)
    bias = conv.bias.detach()[: w.shape[0]] if conv.bias is not None else None
    if bn is not None:  # fold: y = (conv(x) + b - mean) * gamma / sqrt(var + eps) + beta
        c = w.shape[0]
        scale = 1.0 / torch.sqrt(bn.running_var[:c].double() + bn.eps)
        if bn.affine:
            scale = scale * bn.weight.detach()[:c].double()
        shift = (bn.bias.detach()[:c].double() if bn.affine else 0.0) - bn.running_mean[:c].double() * scale
        if bias is not None:
            shift = shift + bias.double() * scale
        w = (w.double() * scale.view(-1, *[1] * (w.dim() - 1))).float()
        bias = shift.float()
    plain = nn.Conv2d(cin, w.shape[0], conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups,
                      bias=bias is not None, padding_mode=conv.padding_mode)
    with torch.no_grad():
        plain.weight.copy_(w)
        if bias is not None:
            plain.bias.copy_(bias)
    return plain


def _plain_linear(linear: nn.Linear, cin: int) -> nn.Linear:
    w, mask = linear.weight.detach(), getattr(linear, "mask", None)
    if mask is not None:
        w = w * mask
    if isinstance(linear, SlimLinear):
        w = w[:, :cin]
    plain = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None)
    with torch.no_grad():
        plain.weight.copy_(w)
        if linear.bias is not None:
            plain.bias.copy_(linear.bias.detach())
    return plain


def _plain_bn(bn: nn.BatchNorm2d, c: int) -> nn.BatchNorm2d:
    plain = nn.BatchNorm2d(c, bn.eps, affine=bn.affine)
    with torch.no_grad():
        plain.running_mean.copy_(bn.running_mean[:c])
        plain.running_var.copy_(bn.running_var[:c])
        if bn.affine:
            plain.weight.copy_(bn.weight.detach()[:c])
            plain.bias.copy_(bn.bias.detach()[:c])
    return plain.eval()


def plain(net: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """A float copy of `net` (which is left untouched) in plain torch modules, for export: each conv (any
    `nn.Conv2d`, slimmable or not) becomes an `nn.Conv2d` at the channels it really uses, with its mask applied and
    the batch norm that directly consumes its output folded in (that batch norm becomes `nn.Identity`); each linear
    becomes an `nn.Linear`; an unfolded batch norm becomes a plain one. Fake quantization is switched off (every
    `set_bits` module at 32 bits) and the copy is in eval mode on the CPU. Module paths stay the same, so a layer's
    weight keeps its name ("blocks.3.expand.conv.weight"). Which conv feeds which batch norm is found by running
    the copy once on a zero input of `input_shape` (C, H, W)."""
    model = copy.deepcopy(net).cpu().float().eval()
    for m in model.modules():
        if callable(getattr(m, "set_bits", None)):
            m.set_bits(FLOAT_BITS)
        if getattr(m, "inplace", None) is True:  # same values; in-place ops only slow torch.export down
            m.inplace = False
    records = trace(model, torch.zeros(1, *input_shape))
    producer = {id(r["output"]): m for m, r in records.items() if isinstance(m, nn.Conv2d)}
    folded: dict[nn.Module, nn.BatchNorm2d] = {}
    replace: dict[nn.Module, nn.Module] = {}
    for m, r in records.items():
        if isinstance(m, nn.BatchNorm2d):
            conv = producer.get(id(r["input"]))
            if conv is not None and m.track_running_stats and conv not in folded:
                folded[conv] = m
                replace[m] = nn.Identity()
            else:
                replace[m] = _plain_bn(m, r["input"].shape[1])
    for m, r in records.items():
        if isinstance(m, nn.Conv2d):
            replace[m] = _plain_conv(m, r["input"].shape[1], folded.get(m))
        elif isinstance(m, nn.Linear):
            replace[m] = _plain_linear(m, r["input"].shape[-1])
    paths = {m: name for name, m in model.named_modules()}
    for old, new in replace.items():
        parent, _, child = paths[old].rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    return model.eval()


# --- float export --------------------------------------------------------------------------------------------------


def _export_float(model: nn.Module, input_shape: tuple[int, ...], path: Path, opset: int) -> None:
    example = torch.randn(2, *input_shape)  # batch 2: a batch of 1 would be specialised away
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=opset, dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("batch")},))


def _strip_debug_info(model) -> None:
    """Drop the exporter's per-node debugging metadata (stack traces with local paths, FX node text): it is
    most of a small model's file and nothing a runtime reads."""
    model.graph.doc_string = ""
    for n in model.graph.node:
        del n.metadata_props[:]
        n.doc_string = ""


def _map_layers(model, weights: Mapping[str, str], layer_bits: Mapping[str, int]) -> dict[str, OnnxLayer]:
    """Layer name -> its node in a float ONNX graph, found by the layer's weight initializer name."""
    import onnx

    by_weight = {n.input[1]: n for n in model.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 1}
    out = {}
    for name, weight in weights.items():
        node = by_weight.get(weight)
        if node is None:
            raise RuntimeError(f"layer {name!r}: no Conv/Gemm node reads weight {weight!r} in the exported graph "
                               "(did the exporter rename initializers?)")
        out[name] = OnnxLayer(name, node.name, node.op_type, weight, node.input[0], layer_bits[name],
                              onnx.TensorProto.DataType.Name(onnx.TensorProto.FLOAT))
    return out


# --- quantization --------------------------------------------------------------------------------------------------


class _Graph:
    """Producer and consumer maps of an ONNX graph."""

    def __init__(self, graph) -> None:
        self.graph = graph
        self.initializers = {i.name for i in graph.initializer}
        self.inputs = {i.name for i in graph.input} - self.initializers
        self.outputs = {o.name for o in graph.output}
        self.producer = {t: n for n in graph.node for t in n.output if t}
        self.consumers: dict[str, list] = defaultdict(list)
        for n in graph.node:
            for t in n.input:
                if t:
                    self.consumers[t].append(n)

    def activations(self, node) -> Iterable[str]:
        return (t for t in (*node.input, *node.output) if t and t not in self.initializers)


def _regions(g: _Graph, quantized: Mapping[str, int], float_layers: set[str]) -> tuple[set[str], dict[str, int]]:
    """The nodes that run quantized: the quantized layers, plus every group of connected non-layer nodes (Add,
    Clip, pooling, ...) all of whose neighbouring layers run as int8 kernels (5-8 bits) and that touches no graph
    input or output: only there does quantizing them buy integer kernels (QLinearConv, QLinearAdd) for the price of
    rounding values the fake-quantized network keeps in float. Returns those node names and, for each such
    non-layer node, the widest bits among its neighbouring layers."""
    layers = set(quantized) | float_layers
    others = [n for n in g.graph.node if n.name not in layers]
    parent = {n.name: n.name for n in others}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for n in others:
        for t in g.activations(n):
            p = g.producer.get(t)
            for m in ([p] if p is not None else []) + g.consumers[t]:
                if m.name in parent:
                    parent[find(m.name)] = find(n.name)
    boundary: dict[str, set[str]] = defaultdict(set)
    touches_io: set[str] = set()
    for n in others:
        root = find(n.name)
        for t in g.activations(n):
            if t in g.inputs or t in g.outputs:
                touches_io.add(root)
            p = g.producer.get(t)
            for m in ([p] if p is not None else []) + g.consumers[t]:
                if m.name in layers:
                    boundary[root].add(m.name)
    region = set(quantized)
    integer = {m for m, b in quantized.items() if storage_bits(b) == 8}
    bits: dict[str, int] = {}
    for n in others:
        root = find(n.name)
        if boundary[root] and boundary[root] <= integer and root not in touches_io:
            region.add(n.name)
            bits[n.name] = max(quantized[m] for m in boundary[root])
    return region, bits


def _activation_bits(g: _Graph, quantized: Mapping[str, int], region: set[str],
                     other_bits: Mapping[str, int]) -> dict[str, int]:
    """Bits of every activation tensor the quantizer will see: a quantized layer's input takes the layer's bits
    (the widest, if several quantized layers read it), as in the fake-quantized network; any other tensor in the
    quantized region (a layer's output before an Add, the Add's output, ...) uses the whole 8- or 16-bit type
    that its producer's activations are stored in: it is quantized only so that runtimes can use integer
    kernels, and at full width that adds little error the network never saw."""
    out: dict[str, int] = {}
    for n in g.graph.node:
        if n.name in quantized:
            t = n.input[0]
            out[t] = max(out.get(t, 0), quantized[n.name])
    for n in g.graph.node:
        if n.name not in region:
            continue
        for t in n.output:
            if t and t not in out:
                out[t] = activation_storage_bits(quantized.get(n.name, other_bits.get(n.name, 8)))
    return out


def _calibration_ranges(float_path: Path, tensors: Iterable[str], calibration: np.ndarray) -> dict[str, tuple]:
    """(min, max) of each tensor over the calibration images, from the float model in onnxruntime."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(float_path))
    present = {o.name for o in model.graph.output}
    names = list(dict.fromkeys(tensors))
    for t in names:
        if t not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    lo = {t: np.inf for t in names}
    hi = {t: -np.inf for t in names}
    for start in range(0, len(calibration), _CALIBRATION_BATCH):
        values = sess.run(names, {INPUT_NAME: calibration[start:start + _CALIBRATION_BATCH]})
        for t, v in zip(names, values):
            lo[t], hi[t] = min(lo[t], float(v.min())), max(hi[t], float(v.max()))
    return {t: (lo[t], hi[t]) for t in names}


def _activation_params(lo: float, hi: float, bits: int) -> tuple[np.ndarray, int]:
    """torch's `quantize_activation` scale and zero point (float32 arithmetic, as torch does it)."""
    levels = 2**bits - 1
    lo32, hi32 = np.float32(min(lo, 0.0)), np.float32(max(hi, 0.0))
    scale = np.float32(max(np.float32((hi32 - lo32) / np.float32(levels)), np.float32(1e-12)))
    zero = int(np.clip(np.round(-lo32 / scale), 0, levels))
    return np.array(scale, dtype=np.float32), zero


def _weight_scales(w: np.ndarray, axis: int, bits: int, bias: np.ndarray | None, input_scale: float) -> np.ndarray:
    """torch's `quantize_weight` per-channel scales, raised where needed so the int32 bias
    (scale input_scale * weight_scale) cannot overflow (matters only for all-zero channels)."""
    qmax = 2 ** (bits - 1) - 1
    absmax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1).astype(np.float32)
    scale = np.maximum(absmax, np.float32(1e-12)) / np.float32(qmax)
    if bias is not None:
        needed = 1.0001 * 2.0 * np.abs(bias.astype(np.float64)) / (2.0**32 - 2) / input_scale
        scale = np.maximum(scale, needed.astype(np.float32))
    return scale.astype(np.float32)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a float32 (N, C, H, W) array, in batches."""

    def __init__(self, calibration: np.ndarray) -> None:
        self.batches = iter([calibration[i:i + _CALIBRATION_BATCH]
                             for i in range(0, len(calibration), _CALIBRATION_BATCH)])

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


class _DropPreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def _quantize(float_path: Path, out_path: Path, layers: Mapping[str, OnnxLayer], calibration: np.ndarray,
              observed: Mapping[str, tuple[float, float]]) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    weight_types = {4: QuantType.QInt4, 8: QuantType.QInt8, 16: QuantType.QInt16}
    activation_types = {8: QuantType.QUInt8, 16: QuantType.QUInt16}
    model = onnx.load(str(float_path))
    g = _Graph(model.graph)
    quantized = {layer.node: layer.bits for layer in layers.values() if layer.bits < FLOAT_BITS}
    float_layers = {layer.node for layer in layers.values() if layer.bits >= FLOAT_BITS}
    region, other_bits = _regions(g, quantized, float_layers)
    act_bits = _activation_bits(g, quantized, region, other_bits)

    ranges = _calibration_ranges(float_path, act_bits, calibration)
    seen: dict[str, tuple[float, float]] = {}
    for layer in layers.values():  # the range the network itself observed, where it has one
        if layer.node in quantized and layer.name in observed:
            lo, hi = observed[layer.name]
            if layer.input in seen:
                lo, hi = min(lo, seen[layer.input][0]), max(hi, seen[layer.input][1])
            seen[layer.input] = ranges[layer.input] = (lo, hi)
    overrides: dict[str, list[dict]] = {}
    act_scale: dict[str, float] = {}
    for t, bits in act_bits.items():
        scale, zero = _activation_params(*ranges[t], bits)
        act_scale[t] = float(scale)
        overrides[t] = [{"quant_type": activation_types[activation_storage_bits(bits)], "scale": scale,
                         "zero_point": np.array(zero)}]
    init = {i.name: i for i in model.graph.initializer}
    for layer in layers.values():
        if layer.node not in quantized:
            continue
        node = next(n for n in model.graph.node if n.name == layer.node)
        w = onnx.numpy_helper.to_array(init[layer.weight])
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        axis = 1 if node.op_type == "Gemm" and not trans_b else 0
        has_bias = len(node.input) > 2 and node.input[2] in init
        bias = onnx.numpy_helper.to_array(init[node.input[2]]) if has_bias else None
        scales = _weight_scales(w, axis, layer.bits, bias, act_scale[layer.input])
        wtype = weight_types[storage_bits(layer.bits)]
        overrides[layer.weight] = [{"quant_type": wtype, "axis": axis, "scale": np.array(s, dtype=np.float32),
                                    "zero_point": np.array(0)} for s in scales]

    class Reader(_Reader, CalibrationDataReader):
        pass

    root = logging.getLogger()
    hint = _DropPreprocessHint()
    root.addFilter(hint)
    try:
        quantize_static(str(float_path), str(out_path), Reader(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=[n.name for n in model.graph.node if n.name not in region],
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"TensorQuantOverrides": overrides, "ActivationSymmetric": False,
                                       "WeightSymmetric": True})
    finally:
        root.removeFilter(hint)
    q = onnx.load(str(out_path))
    _keep_float_where_asked(q, region)
    _float_biases(q, model, [layer.node for layer in layers.values()
                             if layer.node in quantized and storage_bits(layer.bits) != 8])
    onnx.save(q, str(out_path))


def _float_biases(model, float_model, nodes: Iterable[str]) -> None:
    """Give these layers their float bias back. The quantizer stores every bias as int32 at scale input_scale *
    weight_scale, which only an integer kernel needs (int8); at 2-4 bits that scale is coarse enough to shift
    outputs by a visible fraction of a step, and int4/int16 layers run as DequantizeLinear + float op anyway."""
    float_nodes = {n.name: n for n in float_model.graph.node}
    float_init = {i.name: i for i in float_model.graph.initializer}
    nodes_by_name = {n.name: n for n in model.graph.node}
    producer = {t: n for n in model.graph.node for t in n.output}
    present = {i.name for i in model.graph.initializer}
    for name in nodes:
        node, original = nodes_by_name[name], float_nodes[name]
        if len(node.input) < 3 or len(original.input) < 3 or original.input[2] not in float_init:
            continue
        dq = producer.get(node.input[2])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        bias = original.input[2]
        if bias not in present:
            if node.input[2] == bias:  # the DequantizeLinear writes the float name: it goes, the float value comes
                model.graph.node.remove(dq)
                producer.pop(bias)
            else:
                bias = f"{bias}_float"
            restored = model.graph.initializer.add()
            restored.CopyFrom(float_init[original.input[2]])
            restored.name = bias
            present.add(bias)
        node.input[2] = bias
    used = {t for n in model.graph.node for t in n.input}
    for n in [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] not in used]:
        model.graph.node.remove(n)


def _keep_float_where_asked(model, region: set[str]) -> None:
    """Undo the quantizer's QuantizeLinear -> DequantizeLinear pairs where the float value is wanted: for a
    consumer outside the quantized region (a 32-bit layer, an op next to one) and for a graph output. The
    quantized layer that produced the tensor then runs as DequantizeLinear + float op."""
    g = _Graph(model.graph)
    remove = []
    rename: dict[str, str] = {}
    for dq in list(model.graph.node):
        if dq.op_type != "DequantizeLinear":
            continue
        q = g.producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        source, value = q.input[0], dq.output[0]
        outside = [c for c in g.consumers[value] if c.name not in region]
        for c in outside:
            for i, t in enumerate(c.input):
                if t == value:
                    c.input[i] = source
        if len(outside) < len(g.consumers[value]):
            continue  # still read quantized inside the region
        remove.append(dq)
        if all(c is dq or c in remove for c in g.consumers[q.output[0]]):
            remove.append(q)
        if value in g.outputs:  # the graph output keeps its name, now written in float by the real producer
            rename[source] = value
    for n in remove:
        model.graph.node.remove(n)
    if rename:
        for n in model.graph.node:
            for i, t in enumerate(n.input):
                n.input[i] = rename.get(t, t)
            for i, t in enumerate(n.output):
                n.output[i] = rename.get(t, t)


def _compact(model) -> None:
    """Drop what a runtime does not need: all-zero int32 zero points of the biases' DequantizeLinear nodes (zero
    is the default; the weights' zero points stay, onnxruntime's QGemm fusion wants them), unused initializers and
    the shape annotations (value_info) that shape inference left; the graph computes exactly the same."""
    import onnx
    from onnx import numpy_helper

    init = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and len(n.input) > 2 and n.input[0] in init and n.input[2] in init:
            zero = init[n.input[2]]
            if zero.data_type == onnx.TensorProto.INT32 and not numpy_helper.to_array(zero).any():
                del n.input[2]
    used = {t for n in model.graph.node for t in n.input} | {o.name for o in model.graph.output}
    for i in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(i)
    del model.graph.value_info[:]


# --- the file ------------------------------------------------------------------------------------------------------


def _describe(model, layers: Mapping[str, OnnxLayer]) -> dict[str, OnnxLayer]:
    """The layers as they are in the final graph (node names survive quantization; weights may be renamed)."""
    import onnx

    nodes = {n.name: n for n in model.graph.node}
    producer = {t: n for n in model.graph.node for t in n.output}
    init = {i.name: i for i in model.graph.initializer}
    out = {}
    for name, layer in layers.items():
        node = nodes[layer.node]
        weight = node.input[1]
        if weight not in init and weight in producer and producer[weight].op_type == "DequantizeLinear":
            weight = producer[weight].input[0]
        dtype = onnx.TensorProto.DataType.Name(init[weight].data_type) if weight in init else "UNKNOWN"
        out[name] = OnnxLayer(name, node.name, node.op_type, weight, node.input[0], layer.bits, dtype)
    return out


def _rename(model, layers: Mapping[str, OnnxLayer]) -> dict[str, OnnxLayer]:
    """Short names: each layer's node takes the layer's name and its weight "<layer>.weight", every other node
    is unnamed and every other tensor "t<i>". The exporters' long generated names were a third of a small
    model's file; the graph computes exactly the same."""
    keep = {i.name for i in model.graph.input} | {o.name for o in model.graph.output} | {""}
    names = {layer.weight: f"{layer.name}.weight" for layer in layers.values()}

    def short(t: str) -> str:
        return t if t in keep else names.setdefault(t, f"t{len(names)}")

    by_node = {layer.node: layer.name for layer in layers.values()}
    for n in model.graph.node:
        n.name = by_node.get(n.name, "")
        n.input[:] = [short(t) for t in n.input]
        n.output[:] = [short(t) for t in n.output]
    for i in model.graph.initializer:
        i.name = short(i.name)
    return {k: OnnxLayer(k, k, v.op_type, short(v.weight), short(v.input), v.bits, v.weight_type)
            for k, v in layers.items()}


def onnx_layers(model_or_path) -> dict[str, OnnxLayer]:
    """Layer name -> where it is in a file written by `export` (read from the file's metadata)."""
    import onnx

    model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else onnx.load(str(model_or_path),
                                                                                         load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in meta:
        raise ValueError(f"no {METADATA_KEY!r} metadata: not a file written by search.export")
    return {name: OnnxLayer(**d) for name, d in json.loads(meta[METADATA_KEY]).items()}


def _check_inputs(net, layer_bits, input_shape, calibration, opset) -> tuple[dict[str, int], np.ndarray | None]:
    modules = layer_modules(net)
    unknown = [name for name in layer_bits if name not in modules]
    if unknown:
        raise ValueError(f"layer_bits names layers the network does not have: {', '.join(map(repr, unknown))}; "
                         f"its layers are {', '.join(modules)}")
    bits = {name: int(layer_bits.get(name, getattr(m, "bits", FLOAT_BITS))) for name, m in modules.items()}
    for name, b in bits.items():
        try:
            storage_bits(b)
        except ValueError as e:
            raise ValueError(f"layer {name!r}: {e}") from None
    if opset < 21 and any(storage_bits(b) in (4, 16) for b in bits.values()):
        raise ValueError(f"opset {opset} has no int4/int16 QuantizeLinear; 2-4 and 9-16 bit layers need opset >= 21")
    if len(tuple(input_shape)) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {input_shape!r}")
    if calibration is not None:
        calibration = np.ascontiguousarray(calibration, dtype=np.float32)
        if calibration.ndim != 4 or calibration.shape[1:] != tuple(input_shape) or len(calibration) == 0:
            raise ValueError(f"calibration must be a float32 (N, {', '.join(map(str, input_shape))}) array with N >= 1,"
                             f" got shape {calibration.shape}")
    return bits, calibration


def _observed_ranges(net: nn.Module) -> dict[str, tuple[float, float]]:
    out = {}
    for name, m in layer_modules(net).items():
        act = getattr(m, "act", None)
        if act is not None and bool(getattr(act, "observed", False)):
            out[name] = (float(act.lo), float(act.hi))
    return out


def export(net: nn.Module, layer_bits: Mapping[str, int], input_shape: tuple[int, int, int], path: str | Path,
           calibration: np.ndarray | None = None, opset: int = 21, *, use_observed_ranges: bool = True) -> Path:
    """Write `net` as one self-contained ONNX file at `path` and return the path.

    The graph reads "input" (float32, N x C x H x W, normalised like the training data, dynamic batch N) and
    writes "logits". `layer_bits` maps layer names (`net.units()`, e.g. "b3.expand") to bits; a layer it leaves
    out keeps the bits its module is set to. With every layer at 32 bits, or without `calibration`, the file is
    float (a warning says so in the second case). Otherwise `calibration` (float32 N x C x H x W, normalised)
    drives onnxruntime's static QDQ quantization: per layer, bits 8 -> int8 weights / uint8 activations,
    4 -> int4 weights / uint8 activations on a 16-level grid, 16 -> int16 / uint16; 2 and 3 bits are stored like
    4 and 5, 6, 7 bits like 8, on their own b-bit grid (ONNX has no such types); 32-bit layers are excluded and
    stay float. The module docstring says exactly how values are quantized, why, and what happens where
    precisions meet.
    `use_observed_ranges`: a layer's input range is the one the network observed (`act.lo/hi`) where it has one,
    so the file computes what the fake-quantized network computed; False takes every range from `calibration`.
    Layer name -> Conv/Gemm node, weight initializer and input tensor is stored in the file's metadata
    (`onnx_layers(path)` reads it). Raises ValueError for a layer name the network does not have, bits that are
    not 2..16 or 32, or calibration of the wrong shape.
    """
    import onnx

    input_shape = tuple(int(d) for d in input_shape)
    bits, calibration = _check_inputs(net, layer_bits, input_shape, calibration, opset)
    path = Path(path)
    quantize = any(b < FLOAT_BITS for b in bits.values())
    if quantize and calibration is None:
        warnings.warn("export: layers below 32 bits but no calibration data; writing a float model", stacklevel=2)
        quantize = False

    model = plain(net, input_shape)
    modules, names = layer_modules(net), {m: n for n, m in net.named_modules()}
    weights = {name: f"{names[m]}.weight" for name, m in modules.items()}
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        float_path = Path(tmp) / "float.onnx"
        _export_float(model, input_shape, float_path, opset)
        float_model = onnx.load(str(float_path))
        _strip_debug_info(float_model)
        onnx.save(float_model, str(float_path))
        layers = _map_layers(float_model, weights, bits)
        _check_float(float_path, model, input_shape)
        if quantize:
            observed = _observed_ranges(net) if use_observed_ranges else {}
            quantized_path = Path(tmp) / "quantized.onnx"
            _quantize(float_path, quantized_path, layers, calibration, observed)
            final = onnx.load(str(quantized_path))
        else:
            final = onnx.load(str(float_path))
    _compact(final)
    described = _rename(final, _describe(final, layers))
    del final.metadata_props[:]
    final.metadata_props.add(key=METADATA_KEY, value=json.dumps({k: asdict(v) for k, v in described.items()},
                                                                separators=(",", ":")))
    onnx.checker.check_model(final)
    _save(final, path)
    _check_runs(path, input_shape)
    return path


def _check_float(float_path: Path, model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """The exported float graph computes what the plain torch network computes."""
    import onnxruntime as ort

    x = torch.randn(3, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x).numpy()
    sess = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"])
    got = sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    tolerance = 1e-3 * max(1.0, float(np.abs(want).max()))
    if got.shape != want.shape or not np.allclose(got, want, rtol=0, atol=tolerance):
        raise RuntimeError(f"the exported float graph differs from the torch network (max |diff| "
                           f"{float(np.abs(got - want).max()) if got.shape == want.shape else 'shape'})")


def _save(model, path: Path) -> None:
    """One file, weights inside, replaced atomically (nothing else is left next to it)."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save_model(model, tmp, save_as_external_data=False)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the file is an ordinary artefact
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_runs(path: Path, input_shape: tuple[int, ...]) -> None:
    """The file loads and runs in onnxruntime's CPU provider (not every type combination has a kernel)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    sess.run([OUTPUT_NAME], {INPUT_NAME: np.zeros((1, *input_shape), dtype=np.float32)})
