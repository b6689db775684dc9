"""Search spaces: each turns an Optuna trial into a Candidate, builds networks from it and
describes its layers. Spaces know networks, never the search machinery."""
from __future__ import annotations

from typing import Any

from .candidate import Candidate, Layer
from .fbnet import FBNetSpace
from .mobilenetv2 import MobileNetV2Space

SPACES = {MobileNetV2Space.name: MobileNetV2Space, FBNetSpace.name: FBNetSpace}


def create(name: str, **settings: Any):
    """The space registered as `name`, configured by `settings` (ValueError names a bad one)."""
    return SPACES[name](**settings)


__all__ = ["SPACES", "Candidate", "Layer", "create"]
