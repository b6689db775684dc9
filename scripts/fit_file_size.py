"""Fit `search.objectives.GRAPH_BYTES`: export networks of the mobilenetv2 space (float, uniform 8-bit and random
mixes and pruned float networks, at 28x28 and 8x8 inputs), subtract the tensors `size_kb` counts from each file's size, and fit what is
left as a cost per file, per float layer, per quantized layer and per precision change along the network.

    .venv/bin/python scripts/fit_file_size.py [--random 6]

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
from search.backends import onnx as backend
from spaces import Candidate

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("file", "float_layer", "quantized_layer", "precision_change")


def counts(layers) -> np.ndarray:
    """How many of each GRAPH_BYTES term a network has: size_kb with each constant set to 1 in turn."""
    saved = dict(objectives.GRAPH_BYTES)
    try:
        objectives.GRAPH_BYTES.update(dict.fromkeys(KEYS, 0))
        tensors = objectives.size_kb(layers) * 1024
        out = []
        for key in KEYS:
            objectives.GRAPH_BYTES[key] = 1
            out.append(objectives.size_kb(layers) * 1024 - tensors)
            objectives.GRAPH_BYTES[key] = 0
        return np.array(out + [tensors])
    finally:
        objectives.GRAPH_BYTES.update(saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", type=int, default=6, help="random mixes per input size")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    conf = yaml.safe_load((ROOT / "conf" / "space" / "mobilenetv2.yaml").read_text())
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
                    net(torch.randn(8, *shape))
                path = backend.export(net, shape, Path(tmp) / "net.onnx")
                layers = space.layers(c)
                rows.append(counts(layers))
                sizes.append(path.stat().st_size)
                predicted.append(objectives.size_kb(layers) * 1024)
    rows, sizes = np.array(rows), np.array(sizes, float)
    fit, *_ = np.linalg.lstsq(rows[:, :-1], sizes - rows[:, -1], rcond=None)
    print("fitted GRAPH_BYTES:", {k: int(round(v)) for k, v in zip(KEYS, fit)})
    print("error with the fit, %:", np.round((rows[:, :-1] @ fit + rows[:, -1] - sizes) / sizes * 100, 2).tolist())
    print("error with the code's constants, %:", np.round((np.array(predicted) - sizes) / sizes * 100, 2).tolist())


if __name__ == "__main__":
    main()
