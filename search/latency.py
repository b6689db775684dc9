"""Latency predictors. A predictor sees layer descriptors only, never a space, so it predicts for
any network that can be described. The search talks to it through `predict` and `describe`.

The model (after nn-Meter): a network's latency is the sum of its layers' latencies, and a layer's
latency is linear in its MACs, activation traffic, weights and a per-layer dispatch cost, with
coefficients per kind of kernel (grouped, depthwise by kernel size, dense conv or linear) and per
way the layer really runs: a float kernel, an integer kernel, or dequantize (from 4, 8 or 16-bit
storage) + float kernel. Where the network is small, what runs between the layers costs as much as
the layers, so the sum also prices residual adds and the layout changes where a run of float or
integer kernels begins or ends. Summed over a network that is a linear model with non-negative
coefficients, fitted from whole-network measurements.

A runtime's kernels work on channels in tiles of its vector width (XNNPACK on AVX2: 8 floats), so a pruned layer
of 13 channels costs what one of 16 does. MACs are counted on channels rounded up to the predictor's
`channel_tile`, which calibration picks from `TILES` by how well each fits the measurements (host-litert, 100
networks, 10-fold: 75% within +-10% counting plain channels, 93% at a tile of 8).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from spaces import Layer
from spaces.precision import storage_bits

FORMAT_VERSION = 2  # 2: layers priced by how they really run (integer kernels, dequantization width, layouts)
KERNELS = ("fp32", "int8", "dequant_fp32")
QUANTITIES = ("macs", "activations", "weights", "layers")  # per million, except layers
INTERCEPT = "network"
TILES = (1, 4, 8, 16, 32)  # channel tiles calibration tries (1: channels as they are)


def kernel_class(layer: Layer) -> str:
    """Dense convs of any kernel and linear layers share one class: in a typical space the stem
    and the classifier never change, so classes of their own could not be told apart from a
    constant, and would price them at nothing in a space where they do change."""
    if layer.groups == 1:
        return "dense"
    if _depthwise(layer):
        return f"depthwise{layer.kernel}"
    return "grouped"


def _depthwise(layer: Layer) -> bool:
    return layer.groups > 1 and layer.groups == layer.in_shape[0] == layer.out_shape[0]


def residual_blocks(layers: Sequence[Layer]) -> list[tuple[int, int]]:
    """(first, last) layer of every block whose output is added to its input. Where the layers say which ones
    end in an add (`Layer.residual`, read from a network's graph), the block starts at the nearest layer before
    whose input has the last one's output shape. Otherwise guessed from the shapes: a depthwise layer with the 1x1
    layers around it, stride 1, whose input and output shapes are equal (a block with equal shapes but no skip,
    as in MobileNetV1, is miscounted)."""
    if any(layer.residual is not None for layer in layers):
        return [(next((i for i in range(last, -1, -1) if layers[i].in_shape == layers[last].out_shape), last), last)
                for last, layer in enumerate(layers) if layer.residual]
    out = []
    for i, dw in enumerate(layers[1:-1], 1):
        if not (_depthwise(dw) and dw.stride == 1 and layers[i + 1].kernel == 1):
            continue
        before = layers[i - 1]
        first = i - 1 if before.kernel == 1 and not _depthwise(before) and before.out_shape == dw.in_shape else i
        if layers[first].in_shape == layers[i + 1].out_shape:
            out.append((first, i + 1))
    return out


def execution(layers: Sequence[Layer], kernels: Mapping[int, str]) -> list[str]:
    """How each layer really runs: "fp32", "int8", or "dequant<storage bits>" (weights and input
    dequantized every run, then a float kernel). An int8 layer runs an integer kernel only where
    its output stays quantized: every layer reading it (through a residual add: every layer around
    that add) takes 8-bit integer input, and the output is not the network's; otherwise the
    runtime dequantizes it like any other quantized layer (measured: onnxruntime's QDQ fusion)."""
    kinds = [kernels[layer.bits] for layer in layers]
    adds = residual_blocks(layers)
    group = list(range(len(layers) + 1))  # tensor i: the input of layer i; joined across residual adds

    def root(i: int) -> int:
        while group[i] != i:
            i = group[i]
        return i

    for first, last in adds:
        group[root(first)] = root(last + 1)
    around: dict[int, set[int]] = {}  # the layers writing or reading each joined tensor
    for t in range(len(layers) + 1):
        around.setdefault(root(t), set()).update(j for j in (t - 1, t) if 0 <= j < len(layers))
    added = {root(last + 1) for _, last in adds}

    def stays_quantized(i: int) -> bool:
        if i + 1 == len(layers):
            return False
        t = root(i + 1)
        if t in added:
            return all(kinds[j] == "int8" for j in around[t])
        return kinds[i + 1] != "fp32" and layers[i + 1].bits <= 8

    return [kind if kind == "fp32" or (kind == "int8" and stays_quantized(i)) else f"dequant{storage_bits(layer.bits)}"
            for i, (layer, kind) in enumerate(zip(layers, kinds))]


def quantities(layer: Layer, sparse_kernels: bool, tile: int = 1) -> dict[str, float]:
    """What a layer's cost is linear in (millions, and 1 for its dispatch); MACs on channels rounded up to
    `tile`; unstructured zeros save work only where the target has sparse kernels."""
    density = 1 - layer.sparsity if sparse_kernels and layer.granularity == "weight" else 1.0
    return {"macs": tiled_macs(layer, tile) * density / 1e6,
            "activations": (math.prod(layer.in_shape) + math.prod(layer.out_shape)) / 1e6,
            "weights": layer.weights * density / 1e6, "layers": 1.0}


def tiled_macs(layer: Layer, tile: int) -> int:
    """The layer's MACs with its input and output channels rounded up to whole tiles (a depthwise layer's
    channels once: each reads one input channel)."""
    def up(c: int) -> int:
        return -(-c // tile) * tile
    per_output = layer.kernel ** 2 * (1 if _depthwise(layer) else up(layer.in_shape[0] // layer.groups))
    return up(layer.out_shape[0]) * per_output * layer.out_shape[1] * layer.out_shape[2]


def features(layers: Sequence[Layer], kernels: Mapping[int, str], sparse_kernels: bool,
             tile: int = 1) -> dict[str, float]:
    """The model's inputs: per (kernel class, execution) sums of each quantity; layout conversions
    where a run of float kernels (blocked layout) or of integer kernels (channels-last) meets
    anything else; residual adds by kind (integer, float fused into a float conv, float); and 1."""
    out: dict[str, float] = {INTERCEPT: 1.0}

    def add(name: str, value: float) -> None:
        out[name] = out.get(name, 0.0) + value

    runs = execution(layers, kernels)
    regions = [run if run in ("fp32", "int8") and layer.kind == "conv" else "other" for run, layer in zip(runs, layers)]
    for i, (layer, run) in enumerate(zip(layers, runs)):
        if i and regions[i - 1] != regions[i]:
            sides = (regions[i - 1] != "other") + (regions[i] != "other")
            add("layout.any.count", sides)
            add("layout.any.activations", sides * math.prod(layer.in_shape) / 1e6)
        for quantity, value in quantities(layer, sparse_kernels, tile).items():
            add(f"{kernel_class(layer)}.{run}.{quantity}", value)
    for first, last in residual_blocks(layers):
        ends = {runs[first - 1] if first else "fp32", runs[last]}  # the two tensors added
        kind = "int8" if ends == {"int8"} else "fp32" if ends == {"fp32"} else "float"
        add(f"residual.{kind}.count", 1.0)
        add(f"residual.{kind}.activations", math.prod(layers[last].out_shape) / 1e6)
    return out


@dataclass(frozen=True)
class Report:
    """Accuracy of a predictor on measurements it was not fitted on."""

    n: int
    mape: float
    within_5pct: float
    within_10pct: float
    spearman: float
    noise_floor: float | None = None  # median relative spread of repeated measurements, where known

    @classmethod
    def of(cls, predicted: Sequence[float], measured: Sequence[float], noise_floor: float | None = None) -> Report:
        from scipy.stats import spearmanr

        p, m = np.asarray(predicted, float), np.asarray(measured, float)
        err = np.abs(p - m) / m
        rho = float(spearmanr(p, m).statistic) if len(m) > 1 else float("nan")
        return cls(len(m), float(err.mean()), float((err <= 0.05).mean()), float((err <= 0.10).mean()), rho, noise_floor)


@dataclass(frozen=True)
class Predictor:
    """A fitted predictor, saved as a versioned JSON file (loading it runs no code)."""

    target: str
    kernels: dict[int, str]
    sparse_kernels: bool
    coefficients: dict[str, float]
    speedups: dict[str, float] = field(default_factory=dict)  # for precisions absent from the measurements
    scale: float = 1.0  # a proxy target's stated scaling of the measured device's latencies
    border: float = 0.0  # a float/int8 border's cost as a share of a float residual add on the same tensor
    channel_tile: int = 1  # MACs counted on channels rounded up to this (calibration picks it: `best_tile`)
    provenance: dict[str, Any] = field(default_factory=dict)
    domain: dict[str, Any] | None = None  # the networks it was fitted on, as bounds (`search.domain`); None: unknown

    def coefficient(self, name: str) -> float:
        """A fitted coefficient, or one derived when the measurements never exercised it: a precision's from
        fp32 by the target's declared speed-up (per-layer and per-add dispatch costs are not sped up), a
        layout border's from a float residual add by the declared `border` share."""
        if name in self.coefficients:
            return self.coefficients[name]
        cls, run, quantity = name.split(".")
        if cls == "layout":
            return self.border * self.coefficients.get(f"residual.fp32.{quantity}", 0.0)
        base = self.coefficients.get(f"{cls}.fp32.{quantity}", 0.0)
        kernel = "dequant_fp32" if run.startswith("dequant") else run
        return base if quantity in ("layers", "count") else base / self.speedups.get(kernel, 1.0)

    def predict(self, layers: Sequence[Layer]) -> float:
        f = features(layers, self.kernels, self.sparse_kernels, self.channel_tile)
        return self.scale * sum(self.coefficient(k) * v for k, v in f.items())

    def breakdown(self, layers: Sequence[Layer]) -> list[tuple[str, str, float]]:
        """Where `predict`'s milliseconds go: (layer name, how it runs, ms) for every layer, then what runs between
        layers (residual adds, layout changes between float, integer and other kernels) and the network's fixed cost; they sum to `predict(layers)`."""
        f = features(layers, self.kernels, self.sparse_kernels, self.channel_tile)
        runs = execution(layers, self.kernels)
        rows = []
        for layer, run in zip(layers, runs):
            cost = sum(self.coefficient(f"{kernel_class(layer)}.{run}.{q}") * v
                       for q, v in quantities(layer, self.sparse_kernels, self.channel_tile).items())
            rows.append((layer.name, run, self.scale * cost))
        per_layer = {f"{kernel_class(layer)}.{run}" for layer, run in zip(layers, runs)}
        between: dict[str, float] = {}
        for k, v in f.items():
            if k != INTERCEPT and k.rpartition(".")[0] not in per_layer:
                what = "residual adds" if k.startswith("residual.") else "layout changes"
                between[what] = between.get(what, 0.0) + self.scale * self.coefficient(k) * v
        fixed = self.scale * self.coefficient(INTERCEPT) if INTERCEPT in self.coefficients else 0.0
        return rows + [(what, "", ms) for what, ms in sorted(between.items())] + [("network (fixed)", "", fixed)]

    def extrapolated(self, layers: Sequence[Layer]) -> list[str]:
        """Why a prediction for `layers` is an extrapolation (bounds of the calibrated domain crossed); empty
        inside it. A predictor saved before domains were recorded says its domain is unknown."""
        from .domain import Domain

        if self.domain is None:
            return ["calibrated domain unknown (fit the predictor again to record it)"]
        return Domain.from_dict(self.domain).outside(layers)

    def fastest(self, choices: Sequence[Sequence[Layer]]) -> float:
        """A floor under the latency of every network whose i-th layer is one of `choices[i]`. Every
        coefficient is non-negative, so leaving out the costs between layers (layout changes,
        residual adds) and giving each layer its cheapest choice and way of running is a lower bound:
        a budget below it can never be met."""
        def cost(layer: Layer, run: str) -> float:
            return sum(self.coefficient(f"{kernel_class(layer)}.{run}.{q}") * v
                       for q, v in quantities(layer, self.sparse_kernels, self.channel_tile).items())

        def runs(layer: Layer) -> list[str]:
            kind, dequant = self.kernels[layer.bits], f"dequant{storage_bits(layer.bits)}"
            return ["fp32"] if kind == "fp32" else ["int8", dequant] if kind == "int8" else [dequant]

        floor = self.coefficient(INTERCEPT) if INTERCEPT in self.coefficients else 0.0
        return self.scale * (floor + sum(min(cost(layer, run) for layer in options for run in runs(layer))
                                         for options in choices))

    def describe(self) -> dict[str, str]:
        p = self.provenance
        proxy = f"; proxy for {self.target}: {p['proxy']}" if p.get("proxy", "none") != "none" else ""
        more = f" and {len(p['sets']) - 1} published measurement sets" if len(p.get("sets", ())) > 1 else ""
        return {"latency.source": f"predicted from {p.get('measurements', '?')} ({p.get('fit_rows', '?')} measurements)"
                                  f"{more}{proxy}",
                "latency.predictor": p.get("file", "(in memory)"), "latency.predictor_version": str(FORMAT_VERSION),
                "latency.measurements": p.get("measurements", ""), "latency.measurements_sha256": p.get("digest", ""),
                "latency.proxy": p.get("proxy", "none"), "latency.heldout_within_10pct": str(p.get("report", {}).get("within_10pct", ""))}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {"version": FORMAT_VERSION, **asdict(self), "kernels": {str(k): v for k, v in self.kernels.items()}}
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".json", delete=False) as tmp:
            json.dump(body, tmp, indent=2, sort_keys=True)
        os.replace(tmp.name, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Predictor:
        body = json.loads(Path(path).read_text())
        if not isinstance(body, dict) or body.pop("version", None) != FORMAT_VERSION:
            raise ValueError(f"not a predictor file of format version {FORMAT_VERSION}")
        try:
            return cls(**(body | {"kernels": {int(k): v for k, v in body["kernels"].items()}}))
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a predictor file ({e})") from None


def declared(target: Mapping[str, Any]) -> dict[str, Any]:
    """What a target's YAML says about how it runs, as the Predictor fields a predictor fitted for it carries."""
    return {"kernels": {int(k): v for k, v in target["kernels"].items()}, "sparse_kernels": target["sparse_kernels"],
            "speedups": dict(target["speedups"]), "scale": target["proxy"]["scale"] if target.get("proxy") else 1.0,
            "border": float(target.get("border_cost", 0.0))}


def for_target(target: Mapping[str, Any]) -> Predictor:
    """The fitted predictor a target's config points at (a data file, checked against the target)."""
    from .errors import UserError

    path = Path(target["predictor"])
    if not path.exists():
        raise UserError(f"target.predictor: no calibrated predictor for {target['name']} at {path}; "
                        f"run `python -m search.calibrate target={target['name']}` first")
    try:
        predictor = Predictor.load(path)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"target.predictor: {path} cannot be used ({e}); fit it again: python -m search.calibrate "
                        f"target={target['name']} (add benchmarks=FILE to refit from measurements already made)") from None
    if predictor.target != target["name"]:
        raise UserError(f"target.predictor: {path} was fitted for target {predictor.target!r}, not {target['name']!r}")
    says = declared(target)
    if says != {k: getattr(predictor, k) for k in says}:
        raise UserError(f"target: conf/target/{target['name']}.yaml changed since {path} was fitted; "
                        f"run `python -m search.calibrate target={target['name']}` again")
    return predictor
