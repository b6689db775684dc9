"""Search spaces: each turns an Optuna trial into a Candidate, builds networks from it and
describes its layers. Spaces know networks, never the search machinery."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .candidate import Candidate, Layer
from .registry import Registry

if TYPE_CHECKING:
    from optuna.trial import BaseTrial
    from torch import Generator, nn


@runtime_checkable
class Space(Protocol):
    """What every space provides: candidates from an Optuna trial (`FixedTrial(params)` rebuilds a stored one),
    their text form for measurement files, the input each candidate's network takes (`input_shape` is the data's, the
    largest), their layers as plain descriptors (what a latency predictor sees) and their networks.
    tests/test_spaces.py runs this contract over every registered space."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    encoding: str  # the measurement-file column that holds `encode`'s text

    def sample(self, trial: BaseTrial) -> Candidate: ...
    def encode(self, candidate: Candidate) -> str: ...
    def decode(self, text: str) -> Candidate: ...
    def input_shape_of(self, candidate: Candidate) -> tuple[int, int, int]: ...
    def layers(self, candidate: Candidate) -> list[Layer]: ...
    def build(self, candidate: Candidate) -> nn.Module: ...


@runtime_checkable
class SearchSpace(Space, Protocol):
    """A space a study searches: weight sharing (one supernet, each candidate a subnet of it; the supernet runs as any
    candidate's network of its elastic dimensions, `set_active`, as the sandwich rule trains it), baselines, the
    bit-widths it offers, and its cheapest network at each (a latency budget below what that reaches is refused before
    a study starts)."""

    bits: Sequence[int]

    def baselines(self) -> dict[str, dict[str, Any]]: ...
    def cheapest(self, bits: int) -> Candidate: ...
    def supernet(self) -> nn.Module: ...
    def set_active(self, supernet: nn.Module, candidate: Candidate) -> None: ...
    def sample_active(self, generator: Generator) -> Candidate: ...
    def extremes(self) -> tuple[Candidate, Candidate]: ...
    def subnet(self, supernet: nn.Module, candidate: Candidate) -> nn.Module: ...


# Space name -> its class, imported when first asked for: candidates, layers and the names of the spaces are
# torch-free, so a command that stops at a bad setting does not wait for torch to load.
SPACES = Registry("space", {"mobilenetv2": "spaces.mobilenetv2:MobileNetV2Space", "fbnet": "spaces.fbnet:FBNetSpace"})


def create(name: str, **settings: Any) -> Space:
    """The space registered as `name`, configured by `settings` (ValueError names a bad one)."""
    return SPACES.load(name)(**settings)


__all__ = ["SPACES", "Candidate", "Layer", "SearchSpace", "Space", "create"]
