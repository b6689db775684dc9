"""Does an exported file behave like the network it came from? Its accuracy with onnxruntime (the
optimised session an app would run), and, when it does not match, where it starts to differ: each
layer's output in the file against the same layer's output in torch."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import Split
from .export import INPUT_NAME, OUTPUT_NAME, layer_modules, onnx_layers, trace
from .train import to_input


def images(x: np.ndarray, mean, std) -> np.ndarray:
    """uint8 images -> the float32 NCHW batch the exported file reads."""
    return to_input(x, mean, std, torch.device("cpu")).contiguous().numpy()


def inputs(split: Split, mean, std, start: int = 0, stop: int | None = None) -> np.ndarray:
    return images(split.x[start:stop], mean, std)


def outputs(path: str | Path, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """The file's logits for the batch `x`, as onnxruntime's CPU provider runs it (all optimisations on)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + batch_size]})[0]
                           for i in range(0, len(x), batch_size)])


def onnx_accuracy(path: str | Path, split: Split, mean, std) -> float:
    """Top-1 accuracy in percent of the file at `path` on a split."""
    return float((outputs(path, inputs(split, mean, std)).argmax(1) == split.y).mean() * 100)


def layer_errors(net: nn.Module, path: str | Path, x: np.ndarray) -> dict[str, float]:
    """Layer name -> relative RMS difference between its output in the file (the Conv/Gemm node, batch norm
    folded in) and in torch (after the batch norm that follows it), on the batch `x`, in network order.
    The file runs unoptimised here so every layer output is still a tensor of its own."""
    import onnx
    import onnxruntime as ort

    net = copy.deepcopy(net).eval()
    for m in net.modules():  # an in-place activation would overwrite the batch-norm output recorded below
        if getattr(m, "inplace", None) is True:
            m.inplace = False
    records = trace(net, torch.from_numpy(x))
    after_bn = {id(r["input"]): r["output"] for m, r in records.items() if isinstance(m, nn.BatchNorm2d)}
    want = {}
    for name, m in layer_modules(net).items():
        out = records[m]["output"]
        want[name] = after_bn.get(id(out), out).detach().float().numpy()

    model = onnx.load(str(path))
    outputs = {n.name: n.output[0] for n in model.graph.node}
    tensors = {name: outputs[layer.node] for name, layer in onnx_layers(model).items()}
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in tensors.values() if t not in known)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    got = dict(zip(tensors, sess.run(list(tensors.values()), {INPUT_NAME: x})))
    return {name: float(np.linalg.norm(got[name] - w) / max(np.linalg.norm(w), 1e-12)) for name, w in want.items()}


def worst_layers(errors: dict[str, float], n: int = 3) -> list[tuple[str, float]]:
    """The layers where the difference grows most over every layer before them (in network order):
    where a broken export starts to differ, not the layers that merely inherit the difference."""
    jumps, worst_before = {}, 0.0
    for name, error in errors.items():
        jumps[name] = error - worst_before
        worst_before = max(worst_before, error)
    return [(name, errors[name]) for name in sorted(jumps, key=jumps.get, reverse=True)[:n]]
