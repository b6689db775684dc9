"""Latency predictors. A predictor sees layer descriptors only, never a space, so it predicts for
any network that can be described. The search talks to it through `predict` and `describe`.

The model (after nn-Meter): a network's latency is the sum of its layers' latencies, and a layer's
latency is linear in its MACs, activation traffic, weights and a per-layer dispatch cost, with
coefficients per kind of kernel (pointwise, grouped, depthwise by kernel size, dense conv, linear)
and per precision the target really runs (fp32, int8, dequantize + fp32). Summed over a network
that is a linear model with non-negative coefficients, fitted from whole-network measurements.
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

FORMAT_VERSION = 1
KERNELS = ("fp32", "int8", "dequant_fp32")
QUANTITIES = ("macs", "activations", "weights", "layers")  # per million, except layers
INTERCEPT = "network"


def kernel_class(layer: Layer) -> str:
    """Dense convs of any kernel and linear layers share one class: in a typical space the stem
    and the classifier never change, so classes of their own could not be told apart from a
    constant, and would price them at nothing in a space where they do change."""
    if layer.groups == 1:
        return "dense"
    if layer.groups == layer.in_shape[0] == layer.out_shape[0]:
        return f"depthwise{layer.kernel}"
    return "grouped"


def features(layers: Sequence[Layer], kernels: Mapping[int, str], sparse_kernels: bool) -> dict[str, float]:
    """The model's inputs: per (kernel class, precision) sums of each quantity, the number and size
    of precision changes between consecutive layers (each one a quantize or dequantize step), and 1."""
    out: dict[str, float] = {INTERCEPT: 1.0}
    previous = None
    for layer in layers:
        kernel = kernels[layer.bits]
        if previous is not None and kernel != previous:  # the runtime converts the tensor in between
            out["transition.any.count"] = out.get("transition.any.count", 0.0) + 1
            out["transition.any.activations"] = out.get("transition.any.activations", 0.0) + math.prod(layer.in_shape) / 1e6
        previous = kernel
        density = 1 - layer.sparsity if sparse_kernels and layer.granularity == "weight" else 1.0
        values = {"macs": layer.macs * density / 1e6,
                  "activations": (math.prod(layer.in_shape) + math.prod(layer.out_shape)) / 1e6,
                  "weights": layer.weights * density / 1e6, "layers": 1.0}
        prefix = f"{kernel_class(layer)}.{kernel}"
        for quantity, value in values.items():
            out[f"{prefix}.{quantity}"] = out.get(f"{prefix}.{quantity}", 0.0) + value
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
    provenance: dict[str, Any] = field(default_factory=dict)

    def coefficient(self, name: str) -> float:
        """A fitted coefficient, or one derived from fp32 by the target's declared speed-up when the
        measurements never exercised that precision (per-layer dispatch cost is not sped up)."""
        if name in self.coefficients:
            return self.coefficients[name]
        cls, kernel, quantity = name.split(".")
        base = self.coefficients.get(f"{cls}.fp32.{quantity}", 0.0)
        return base if quantity == "layers" else base / self.speedups.get(kernel, 1.0)

    def predict(self, layers: Sequence[Layer]) -> float:
        f = features(layers, self.kernels, self.sparse_kernels)
        return self.scale * sum(self.coefficient(k) * v for k, v in f.items())

    def fastest(self, choices: Sequence[Sequence[Layer]]) -> float:
        """The smallest latency predicted for a network whose i-th layer is any one of
        `choices[i]`. Exact, not a search: a network's latency is a sum over its layers plus a cost
        for each precision change between neighbours, so the best choice for each layer given its
        predecessor's is a shortest path along the chain."""
        best = [(layer, self.predict([layer])) for layer in choices[0]]
        for options in choices[1:]:
            best = [(layer, min(cost + self.predict([prev, layer]) - self.predict([prev]) for prev, cost in best))
                    for layer in options]
        return min(cost for _, cost in best)

    def describe(self) -> dict[str, str]:
        p = self.provenance
        proxy = f"; proxy for {self.target}: {p['proxy']}" if p.get("proxy", "none") != "none" else ""
        return {"latency.source": f"predicted from {p.get('measurements', '?')} ({p.get('fit_rows', '?')} measurements){proxy}",
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
            raise ValueError(f"{path}: not a predictor file of format version {FORMAT_VERSION}")
        try:
            return cls(**(body | {"kernels": {int(k): v for k, v in body["kernels"].items()}}))
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a predictor file ({e})") from None


def fit(networks: Sequence[Sequence[Layer]], latency_ms: Sequence[float], kernels: Mapping[int, str],
        sparse_kernels: bool, iterations: int = 30) -> dict[str, float]:
    """Non-negative coefficients minimising the sum of absolute relative errors (iteratively
    reweighted least squares). Relative, because a 2 ms miss matters on a 20 ms network and not on
    a 200 ms one; absolute rather than squared, because phone measurements carry runs of outliers
    (interference, throttling) that a squared loss chases."""
    from scipy.optimize import nnls

    rows = [features(layers, kernels, sparse_kernels) for layers in networks]
    names = sorted({k for r in rows for k in r})
    y = np.asarray(latency_ms, float)
    a = np.array([[r.get(k, 0.0) for k in names] for r in rows]) / y[:, None]
    scale = np.maximum(a.max(0), 1e-12)  # columns of similar size keep NNLS well conditioned
    a = a / scale
    b = np.ones(len(y))
    coef, _ = nnls(a, b)
    for _ in range(iterations):
        w = 1 / np.sqrt(np.maximum(np.abs(a @ coef - b), 1e-3))
        coef, _ = nnls(a * w[:, None], b * w)
    return {k: float(c) for k, c in zip(names, coef / scale)}


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
        raise UserError(f"target.predictor: {path} is not a predictor file ({e})") from None
    if predictor.target != target["name"]:
        raise UserError(f"target.predictor: {path} was fitted for target {predictor.target!r}, not {target['name']!r}")
    declared = ({int(k): v for k, v in target["kernels"].items()}, target["sparse_kernels"], dict(target["speedups"]),
                target["proxy"]["scale"] if target.get("proxy") else 1.0)
    if declared != (predictor.kernels, predictor.sparse_kernels, predictor.speedups, predictor.scale):
        raise UserError(f"target: conf/target/{target['name']}.yaml changed since {path} was fitted; "
                        f"run `python -m search.calibrate target={target['name']}` again")
    return predictor
