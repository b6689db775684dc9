"""The two plain values a space hands to the rest of the system, a candidate and its layers, and which
network a candidate is (`identity`)."""
from __future__ import annotations

from dataclasses import asdict, astuple, dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Candidate:
    """One point of a space: exactly the trial's parameters, frozen and hashable.

    It crosses process and machine borders, so it holds names and numbers only.
    """

    space: str
    params: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, space: str, params: Mapping[str, Any]) -> Candidate:
        return cls(space, tuple(sorted(params.items())))

    def as_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def __getitem__(self, name: str) -> Any:
        return self.as_dict()[name]


@dataclass(frozen=True)
class Layer:
    """A conv or linear layer as a latency predictor sees it: shapes and numbers, no weights.

    `sparsity` is the fraction removed. With granularity "channel" the removal is already in
    the shapes (the layer is physically smaller); with "weight" the shapes are dense and a
    fraction of the weights is zero.
    """

    name: str
    kind: str  # "conv" or "linear"
    in_shape: tuple[int, int, int]  # (C, H, W); a linear layer is (C, 1, 1)
    out_shape: tuple[int, int, int]
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    bits: int = 32  # weights and input activations; 32 means float
    sparsity: float = 0.0
    granularity: str = "weight"
    # whether its output is added to the input of the block it ends (a residual add); None: not known, and a
    # predictor guesses it from the shapes around it (spaces leave it so; `search.describe` reads the graph)
    residual: bool | None = None

    @property
    def weights(self) -> int:
        return self.out_shape[0] * (self.in_shape[0] // self.groups) * self.kernel**2

    @property
    def params(self) -> int:
        """Weights plus one bias per output channel (batch norm folds into it at export)."""
        return self.weights + self.out_shape[0]

    @property
    def macs(self) -> int:
        return self.weights * self.out_shape[1] * self.out_shape[2]

    @property
    def nonzero_weights(self) -> int:
        if self.granularity == "weight":
            return round(self.weights * (1.0 - self.sparsity))
        return self.weights

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"weights": self.weights, "params": self.params, "macs": self.macs}


def identity(space: Any, candidate: Candidate) -> tuple:
    """Which network a candidate is: its space and every layer as built (shapes, bits, the sparsity rounding
    leaves), not the choices that led there. Choices that build the same network (widths or sparsities that round
    to the same channels, a setting of a layer the network does not have) are the same network. Layers are what a
    space builds the network from and all a latency predictor reads, so equal identities train and predict
    alike (a weight-granularity sparsity stays as chosen: two that zero the same count in a tiny layer stay apart).
    Plain hashable tuples: no pickles, and recomputed from params, so a stored study needs no new field."""
    return (candidate.space, *(astuple(layer) for layer in space.layers(candidate)))
