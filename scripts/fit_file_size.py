"""Fit `search.objectives.GRAPH_BYTES[file]`: export networks of the mobilenetv2 space to one format (float, uniform
8-bit and random mixes and pruned float networks, at 28x28 and 8x8 inputs), subtract the tensors `size_kb` counts
from each file's size, and fit what is left as a cost per file, per float layer, per quantized layer and per
precision change along the network. For `litert` the mixes use the bit-widths a .tflite holds (target host-litert).

    .venv/bin/python scripts/fit_file_size.py [--file onnx|litert] [--random 6]

Prints the fitted constants and each file's error with them, and with the constants now in the code.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import optuna
import torch
import yaml

import spaces
from search import objectives
from search import backends
from spaces import Candidate

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("file", "float_layer", "quantized_layer", "precision_change")


def counts(layers, file: str) -> np.ndarray:
    """How many of each GRAPH_BYTES term a network has: size_kb with each constant set to 1 in turn."""
    graph = objectives.GRAPH_BYTES[file]
    saved = dict(graph)
    try:
        graph.update(dict.fromkeys(KEYS, 0))
        tensors = objectives.size_kb(layers, file) * 1024
        out = []
        for key in KEYS:
            graph[key] = 1
            out.append(objectives.size_kb(layers, file) * 1024 - tensors)
            graph[key] = 0
        return np.array(out + [tensors])
    finally:
        graph.update(saved)


def trained_like(net: torch.nn.Module) -> None:
    """Batch-norm statistics and affine parameters as training leaves them (not 0 and 1): the folded biases are then
    all different, as in a trained network. A .tflite stores identical constants once, so untrained networks'
    all-zero biases would make files look smaller than the ones the search ships."""
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", choices=list(backends.BACKENDS), default="onnx", help="the export format")
    parser.add_argument("--random", type=int, default=6, help="random mixes per input size")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backend = backends.get(args.file)
    conf = yaml.safe_load((ROOT / "conf" / "space" / "mobilenetv2.yaml").read_text())
    if args.file == "litert":
        conf["bits"] = list(backends.HOLDS["litert"])
    rows, sizes, predicted = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in [(1, 28, 28), (1, 8, 8)]:
            space = spaces.create(**conf | {"input_shape": shape, "num_classes": 10})
            supernet = space.supernet()
            study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
            candidates = [Candidate.of(space.name, p) for p in space.baselines().values()]
            mixes = [space.sample(study.ask()) for _ in range(args.random)]
            floats = [Candidate.of(space.name, c.as_dict() | {f"bits.{n}": 32 for n in space.layer_names})
                      for c in mixes[: args.random // 2]]  # pruned float networks too
            candidates += mixes + floats
            for c in candidates:
                net = space.subnet(supernet, c).eval()
                with torch.no_grad():
                    trained_like(net)
                    net(torch.randn(8, *shape))
                path = backend.export(net, shape, Path(tmp) / f"net{backend.SUFFIX}")
                layers = space.layers(c)
                rows.append(counts(layers, args.file))
                sizes.append(path.stat().st_size)
                predicted.append(objectives.size_kb(layers, args.file) * 1024)
    rows, sizes = np.array(rows), np.array(sizes, float)
    fit, *_ = np.linalg.lstsq(rows[:, :-1], sizes - rows[:, -1], rcond=None)
    print(f"fitted GRAPH_BYTES[{args.file!r}]:", {k: int(round(v)) for k, v in zip(KEYS, fit)})
    print("error with the fit, %:", np.round((rows[:, :-1] @ fit + rows[:, -1] - sizes) / sizes * 100, 2).tolist())
    print("error with the code's constants, %:", np.round((np.array(predicted) - sizes) / sizes * 100, 2).tolist())


if __name__ == "__main__":
    main()
