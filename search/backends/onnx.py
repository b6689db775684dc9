"""The ONNX backend: a trained network of any space as one self-contained ONNX file for onnxruntime.

The file is the network's plain form (`spaces.fold.deployable`: batch norm folded, weights on their grid,
every quantizer as quantize/dequantize ops with its own frozen scale and zero point) exported by torch's
dynamo exporter, so it quantizes exactly where and how the fake-quantized network did: nothing is
re-calibrated. Then the weights are stored as integers: each quantized layer's weights as int4/int8/int16
(per output channel, symmetric, zero point 0) behind a DequantizeLinear.

Activations are unsigned (uint8 up to 8 bits, uint16 above) on their own b-bit grid; 4-bit grids are kept in
uint8 (onnxruntime 1.31's ClipQuantFusion aborts on uint4 after a ReLU6). An 8-bit layer reading an 8-bit
grid keeps its bias as int32 at input x weight scale behind a DequantizeLinear, so onnxruntime fuses it
into an integer kernel (QLinearConv, QGemm) whose requantization onto the next quantizer's grid is the
network's own quantize step; every other layer runs as DequantizeLinear + float kernel, its bias an Add.
The int32 bias is the one rounding the trained network does not simulate: at most half an accumulator unit
(input x weight scale; measured on a trained network: at most 2% of an output step), yet enough to move a few
activations across a rounding boundary. It is not simulated in training, where the bias exists only once batch
norm is folded, nor in scoring, which would change every study for a difference the gate bounds anyway:
`reference` is the network with the file's rounding, computed from the network alone, and parity checks the file
against it; the gate's accuracy tolerance bounds how far that is from what the trial scored.

Every session this project opens on such a file (`session`) turns off onnxruntime's WeightBiasQuantization
(`DISABLED_OPTIMIZERS`; an app should too). On an x86 CPU without VNNI, onnxruntime's u8s8 integer kernels
add pairs of products in 16 bits and saturate where int8 weights are large; there `session` sets
`session.x64quantprecision`, which runs those layers as u8u8 and computes what the file says. onnxruntime
applies that option on every x86 CPU with AVX2, VNNI or not, and on a VNNI CPU it only halves the integer
kernels' speed, so `session` asks the runtime first (`u8s8_saturates`). An app on x86 should do the same.
"""
from __future__ import annotations

import functools
import json
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, cast

import numpy as np
import torch
from torch import nn

from spaces.fold import FoldedLayer, deployable, layer_outputs, trace
from spaces.precision import FLOAT_BITS, ONNX_INT32_BIAS_BITS as INT32_BIAS_BITS, storage_bits
from spaces.quantize import QuantizeDequantize

from .files import INPUT_NAME, OUTPUT_NAME, save_atomically

NAME = "onnx"
SUFFIX = ".onnx"
GATE = "min_agreement"  # promote's setting bounding the file's top-1 agreement with `reference`
STORED = {4: "INT4", 8: "INT8", 16: "INT16", FLOAT_BITS: "FLOAT"}  # storage_bits -> the weights' ONNX element type
METADATA_KEY = "compression_search.layers"
OPSET = 21  # int4 and uint16 QuantizeLinear/DequantizeLinear
# onnxruntime's pass that quantizes a float layer's weights and bias between quantized tensors, at scales of its
# own choosing, to fuse an integer kernel the network never had (measured: 95% top-1 agreement instead of 100%)
DISABLED_OPTIMIZERS = ["WeightBiasQuantization"]


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


def session(path: str | Path, threads: int | None = None, optimize: bool = True):
    """The onnxruntime CPU session every check and measurement uses (see the module docstring)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if u8s8_saturates():
        options.add_session_config_entry("session.x64quantprecision", "1")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = path.SerializeToString() if hasattr(path, "SerializeToString") else str(path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=DISABLED_OPTIMIZERS)


@functools.cache
def u8s8_saturates() -> bool:
    """Does this CPU's onnxruntime saturate u8 x s8 products added in pairs (x86 without VNNI)? Asked of the
    runtime itself, without the option: one MatMulInteger whose pairs (255 x 127, twice) overflow 16 bits."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k = 64
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "u8s8",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])],
                              [numpy_helper.from_array(np.full((k, 1), 127, np.int8), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"a": np.full((1, k), 255, np.uint8)})[0]
    return int(got.item()) != 255 * 127 * k


def export(net: nn.Module, input_shape: tuple[int, int, int], path: str | Path) -> Path:
    """Write `net` (any space's network, its quantizers' ranges observed) as one ONNX file at `path`.

    The graph reads "input" (float32, N x C x H x W, normalised like the training data, dynamic batch N) and
    writes "logits". Layer name -> node, weight initializer and input tensor is stored in the file's metadata
    (`layers(path)` reads it). ValueError names a quantizer that never observed a range or a layer whose bits
    the file cannot store."""
    import onnx

    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {shape!r}")
    model, folded = deployable(net, shape)
    bias_scales = _round_int32_biases(model, folded, shape)
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        _export(model, shape, raw)
        graph = onnx.load(str(raw))
    _strip_debug_info(graph)
    layers = _map_layers(graph, folded)
    _store_integers(graph, layers, bias_scales)
    _compact(graph)
    described = _rename(graph, _describe(graph, layers))
    del graph.metadata_props[:]
    graph.metadata_props.add(key=METADATA_KEY, value=json.dumps({k: asdict(v) for k, v in described.items()},
                                                                separators=(",", ":")))
    onnx.checker.check_model(graph)
    path = save_atomically(Path(path), lambda tmp: onnx.save_model(graph, tmp, save_as_external_data=False))
    session(path).run([OUTPUT_NAME], {INPUT_NAME: np.zeros((1, *shape), dtype=np.float32)})  # it loads, runs
    return path


def reference(net: nn.Module, input_shape: tuple[int, int, int]) -> nn.Module:
    """The network as its file computes it: the plain network `export` writes, with the int32 biases rounded as the
    file stores them (the one rounding the trained network does not simulate). Parity checks the file against this,
    computed from the network alone; the gate's accuracy tolerance bounds how far it is from what the trial scored."""
    shape = tuple(int(d) for d in input_shape)
    model, folded = deployable(net, shape)
    _round_int32_biases(model, folded, shape)
    return model


def audit(path: str | Path, net: nn.Module, input_shape: tuple[int, int, int]) -> list[str]:
    """What the file's layers (its metadata, each weight's stored type read from the graph) differ in from the
    network's plan: the same layers, each weight stored as its precision's integer type (int4/int8/int16) or float."""
    _, folded = deployable(net, tuple(int(d) for d in input_shape))
    stored = layers(path)
    if list(stored) != list(folded):
        return [f"the file's layers {list(stored)[:4]}... are not the network's {list(folded)[:4]}..."]
    return [f"layer {name!r}: weights stored as {stored[name].weight_type}, its {f.bits} bits want "
            f"{STORED[storage_bits(f.bits)]}" for name, f in folded.items()
            if stored[name].weight_type != STORED[storage_bits(f.bits)]]


def layer_errors(net: nn.Module, path: str | Path, x: np.ndarray) -> dict[str, float]:
    """Layer name -> relative RMS difference between its output in the file (the Conv/Gemm node, batch norm folded
    in) and in torch (after the batch norm that follows it), on the batch `x`, in network order. The file runs
    unoptimised here so every layer output is still a tensor of its own."""
    import onnx

    want = layer_outputs(net, x)
    model = onnx.load(str(path))
    outputs = {n.name: n.output[0] for n in model.graph.node}
    tensors = {name: outputs[layer.node] for name, layer in layers(model).items()}
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in tensors.values() if t not in known)
    got = dict(zip(tensors, session(model, optimize=False).run(list(tensors.values()), {INPUT_NAME: x})))
    return {name: float(np.linalg.norm(got[name] - w) / cast("np.floating | float", max(np.linalg.norm(w), 1e-12)))
            for name, w in want.items()}  # cast: max() of a numpy and a Python float


def _round_int32_biases(model: nn.Module, folded: Mapping[str, FoldedLayer],
                        input_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Round in place the bias of every layer that runs as an integer kernel (`INT32_BIAS_BITS` weights reading
    what a quantizer of those bits wrote) onto the int32 grid at input x weight scale; their per-channel bias
    scales by layer name."""
    records = trace(model, torch.zeros(1, *input_shape), kinds=(nn.Conv2d, nn.Linear, QuantizeDequantize))
    written_by = {id(r["output"]): m for m, r in records.items() if isinstance(m, QuantizeDequantize)}
    scales = {}
    for name, layer in folded.items():
        plain = cast("nn.Conv2d | nn.Linear", model.get_submodule(layer.path))  # deployable's plain layers
        quantizer = written_by.get(id(records[plain]["input"]))
        if (layer.bits not in INT32_BIAS_BITS or quantizer is None or quantizer.bits not in INT32_BIAS_BITS
                or plain.bias is None):
            continue
        w = plain.weight.detach().float().reshape(len(plain.weight), -1)
        scale = torch.tensor(np.float32(quantizer.scale)) * _weight_scale(w, layer.bits)
        q = torch.round(plain.bias.detach().double() / scale.double())
        if q.abs().max() > np.iinfo(np.int32).max:
            continue
        with torch.no_grad():
            plain.bias.copy_(q * scale.double())  # exact in double; float32 rounds it as onnxruntime's DQ does
        scales[name] = scale.numpy()
    return scales


def _weight_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel scale (float32) of weights already on their grid (rows: output channels)."""
    return w.abs().amax(1).clamp_min(1e-30) / (2 ** (bits - 1) - 1)


def layers(model_or_path) -> dict[str, OnnxLayer]:
    """Layer name -> where it is in a file written by `export` (read from the file's metadata)."""
    import onnx

    model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else onnx.load(str(model_or_path),
                                                                                         load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in meta:
        raise ValueError(f"no {METADATA_KEY!r} metadata: not a file written by this project's ONNX export")
    return {name: OnnxLayer(**d) for name, d in json.loads(meta[METADATA_KEY]).items()}


def _export(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
    example = torch.randn(2, *input_shape)  # batch 2: a batch of 1 would be specialised away
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=OPSET, dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("batch")},))


def _strip_debug_info(model) -> None:
    """Drop the exporter's per-node debugging metadata (stack traces with local paths, FX node text): it is
    most of a small model's file and nothing a runtime reads."""
    model.graph.doc_string = ""
    for n in model.graph.node:
        del n.metadata_props[:]
        n.doc_string = ""


def _map_layers(model, folded: Mapping[str, FoldedLayer]) -> dict[str, OnnxLayer]:
    """Layer name -> its node in the exported graph, found by the layer's weight initializer name."""
    by_weight = {n.input[1]: n for n in model.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 1}
    out = {}
    for name, layer in folded.items():
        node = by_weight.get(f"{layer.path}.weight")
        if node is None:
            raise RuntimeError(f"layer {name!r}: no Conv/Gemm node reads weight {layer.path}.weight in the exported "
                               "graph (did the exporter rename initializers?)")
        out[name] = OnnxLayer(name, node.name, node.op_type, node.input[1], node.input[0], layer.bits, "FLOAT")
    return out


def _store_integers(model, layers: Mapping[str, OnnxLayer], bias_scales: Mapping[str, np.ndarray]) -> None:
    """Quantized layers' weights as integers behind a DequantizeLinear. A layer with an int32 bias
    (`bias_scales`, already rounded onto it) keeps it behind a DequantizeLinear: onnxruntime fuses it into an
    integer kernel. Any other layer next to quantized values gets its bias as an Add after it: onnxruntime's
    optimizer would otherwise quantize that bias (and a float layer's weights) at scales the network never used,
    to fuse an integer kernel the network does not have (measured: 1-4% of top-1 agreement at 8 bits, up to 60%
    at 3-4 bits). So the file computes the network the trial scored."""
    from onnx import helper, numpy_helper

    init = {i.name: i for i in model.graph.initializer}
    producer = {t: n for n in model.graph.node for t in n.output}
    nodes = {n.name: n for n in model.graph.node}
    for layer in layers.values():
        node = nodes[layer.node]
        feeding = producer.get(node.input[0])
        quantized_input = feeding is not None and feeding.op_type == "DequantizeLinear"
        if layer.bits < FLOAT_BITS:
            _store_weights(model, node, layer, init)
        if not ((layer.bits < FLOAT_BITS or quantized_input) and len(node.input) > 2 and node.input[2] in init):
            continue
        bias = node.input[2]
        if layer.name in bias_scales:
            _store_bias(model, node, init, bias_scales[layer.name])
            continue
        value = numpy_helper.to_array(init[bias])
        init[bias].CopyFrom(numpy_helper.from_array(value.reshape(-1, 1, 1) if node.op_type == "Conv" else value,
                                                    bias))
        del node.input[2]
        out = node.output[0]
        node.output[0] = f"{out}_before_bias"
        model.graph.node.insert(list(model.graph.node).index(node) + 1,
                                helper.make_node("Add", [node.output[0], bias], [out]))


def _store_bias(model, node, init, scale: np.ndarray) -> None:
    """The node's bias (already on the int32 grid of `scale`) as int32 behind a DequantizeLinear, per output
    channel, zero point 0: what an integer kernel adds to its accumulator."""
    from onnx import helper, numpy_helper

    bias = node.input[2]
    q = np.round(numpy_helper.to_array(init[bias]).astype(np.float64) / scale).astype(np.int32)
    model.graph.initializer.extend([numpy_helper.from_array(q, f"{bias}_q"),
                                    numpy_helper.from_array(scale.astype(np.float32), f"{bias}_scale"),
                                    numpy_helper.from_array(np.zeros(len(q), np.int32), f"{bias}_zero")])
    dq = helper.make_node("DequantizeLinear", [f"{bias}_q", f"{bias}_scale", f"{bias}_zero"], [f"{bias}_dq"],
                          axis=0)
    model.graph.node.insert(list(model.graph.node).index(node), dq)
    node.input[2] = dq.output[0]


def _store_weights(model, node, layer: OnnxLayer, init) -> np.ndarray:
    """Replace the layer's float weights (already on their grid) by integers + DequantizeLinear; their scales."""
    from onnx import helper, numpy_helper

    w = numpy_helper.to_array(init[layer.weight]).astype(np.float32)
    scale = _weight_scale(torch.from_numpy(w.reshape(len(w), -1)), layer.bits).numpy()
    q = np.round(w / scale.reshape(-1, *[1] * (w.ndim - 1)))
    # Gemm from nn.Linear reads its weights as (out, in) with transB=1: the output channel is axis 0 either way
    width = storage_bits(layer.bits)
    stored = _integer_initializer(q, f"{layer.weight}_q", width)
    zero = _integer_initializer(np.zeros(len(w)), f"{layer.weight}_zero", width)  # onnxruntime's Gemm rewrite needs it
    model.graph.initializer.extend([stored, numpy_helper.from_array(scale, f"{layer.weight}_scale"), zero])
    dq = helper.make_node("DequantizeLinear", [stored.name, f"{layer.weight}_scale", zero.name],
                          [f"{layer.weight}_dq"], axis=0)
    model.graph.node.insert(list(model.graph.node).index(node), dq)
    node.input[1] = dq.output[0]
    return scale


def _integer_initializer(q: np.ndarray, name: str, width: int):
    from onnx import TensorProto, helper, numpy_helper

    if width == 4:  # numpy has no int4: the helper packs two values a byte
        return helper.make_tensor(name, TensorProto.INT4, q.shape, q.astype(np.int8).flatten().tolist())
    return numpy_helper.from_array(q.astype({8: np.int8, 16: np.int16}[width]), name)


def _compact(model) -> None:
    """Drop what a runtime does not need: unused initializers and the shape annotations (value_info) that shape
    inference left; the graph computes exactly the same."""
    used = {t for n in model.graph.node for t in n.input} | {o.name for o in model.graph.output}
    for i in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(i)
    del model.graph.value_info[:]


def _describe(model, layers: Mapping[str, OnnxLayer]) -> dict[str, OnnxLayer]:
    """The layers as they are in the final graph (the weight behind its DequantizeLinear, its stored type)."""
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


def outputs(path: str | Path, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """The file's logits for the batch `x`, as onnxruntime's CPU provider runs it (all optimisations on)."""
    sess = session(path)
    return np.concatenate([sess.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + batch_size]})[0]
                           for i in range(0, len(x), batch_size)])
