"""Latency predictors. A predictor sees layer descriptors only, never a space, so it predicts for
any network that can be described; the search talks to it through `predict` and `describe`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

from spaces import Layer

KERNELS = ("fp32", "int8", "dequant_fp32")


class Predictor(Protocol):
    def predict(self, layers: Sequence[Layer]) -> float:
        """End-to-end latency in milliseconds, batch 1."""

    def describe(self) -> dict[str, str]:
        """Where the numbers come from: recorded with every trial."""


@dataclass(frozen=True)
class Analytic:
    """A first-order roofline model from the target's declaration: each layer takes the longer
    of its compute time (MACs at the throughput of the kernel its bit-width really runs on) and
    its memory time (bytes moved at the sustained bandwidth), plus a fixed dispatch cost.
    Not calibrated: its coefficients are the target file's stated assumptions."""

    target: str
    kernels: Mapping[int, str]
    sparse_kernels: bool
    gmacs: Mapping[str, float]
    depthwise_efficiency: float
    bandwidth_gbs: float
    layer_overhead_us: float

    def layer_ms(self, layer: Layer) -> float:
        kernel = self.kernels[layer.bits]
        macs = layer.macs * ((1 - layer.sparsity) if self.sparse_kernels and layer.granularity == "weight" else 1)
        throughput = self.gmacs["int8" if kernel == "int8" else "fp32"] * 1e9
        if layer.groups > 1:
            throughput *= self.depthwise_efficiency
        act_bytes = 1 if kernel == "int8" else 4
        weight_bytes = layer.weights * (1 if kernel == "int8" else 4)
        if kernel == "dequant_fp32":  # the stored low-precision weights are read, then expanded
            weight_bytes += layer.weights * layer.bits / 8
        moved = weight_bytes + act_bytes * (math.prod(layer.in_shape) + math.prod(layer.out_shape))
        seconds = max(macs / throughput, moved / (self.bandwidth_gbs * 1e9)) + self.layer_overhead_us * 1e-6
        return seconds * 1e3

    def predict(self, layers: Sequence[Layer]) -> float:
        return sum(self.layer_ms(layer) for layer in layers)

    def describe(self) -> dict[str, str]:
        return {"latency.predictor": "analytic", "latency.predictor_version": "1",
                "latency.calibrated": "false", "latency.source": f"analytic roofline from conf/target/{self.target}.yaml"}


def from_target(target: Mapping[str, Any]) -> Predictor:
    """The predictor a target's config declares."""
    p = target["predictor"]
    if p["kind"] != "analytic":
        raise ValueError(f"target.predictor.kind: unknown predictor {p['kind']!r}")
    return Analytic(target["name"], {int(k): v for k, v in target["kernels"].items()}, bool(target["sparse_kernels"]),
                    dict(p["gmacs"]), float(p["depthwise_efficiency"]), float(p["bandwidth_gbs"]),
                    float(p["layer_overhead_us"]))
