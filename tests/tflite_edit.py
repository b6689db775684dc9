"""Plants one defect in a `.tflite` file, through the file's own flatbuffer schema (as LiteRT ships it), the way
a broken exporter would have written it: the file still loads and runs, and computes something else."""
from __future__ import annotations

from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

KERNELS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}


def _load(path: Path):
    model = schema.ModelT.InitFromPackedBuf(bytearray(Path(path).read_bytes()), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    graph = model.subgraphs[0]
    ops = [(names[model.operatorCodes[op.opcodeIndex].builtinCode], op) for op in graph.operators]
    return model, graph, ops


def _save(model, path: Path) -> Path:
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    Path(path).write_bytes(builder.Output())
    return Path(path)


def integer_kernels(path: Path, kind: str = "CONV_2D") -> list[int]:
    """Positions (among the file's conv/linear kernels) of the `kind` kernels whose weights are int8 constants.
    A CONV_2D reads its input directly; a depthwise one often through a PAD that must keep its input's grid."""
    _, graph, ops = _load(path)
    kernels = [(name, op) for name, op in ops if name in KERNELS]
    return [k for k, (name, op) in enumerate(kernels)
            if name == kind and graph.tensors[op.inputs[1]].type == schema.TensorType.INT8]


def edit(path: Path, out: Path, kernel: int, what: str, by: float) -> Path:
    """Copy `path` to `out` with the `kernel`-th conv/linear kernel changed: `what` is "weight_scale" (its
    per-channel scales times `by`), "input_scale" (its int8 input's scale times `by`) or "input_zero_point"
    (its int8 input's zero point plus `by`)."""
    model, graph, ops = _load(path)
    op = [op for name, op in ops if name in KERNELS][kernel]
    tensor = graph.tensors[op.inputs[1] if what == "weight_scale" else op.inputs[0]]
    q = tensor.quantization
    if what == "input_zero_point":
        q.zeroPoint = (np.asarray(q.zeroPoint) + int(by)).tolist()
    else:
        q.scale = (np.asarray(q.scale, np.float32) * np.float32(by)).tolist()
    return _save(model, out)
