"""Search spaces: each turns an Optuna trial into a Candidate, builds networks from it and
describes its layers. Spaces know networks, never the search machinery."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module
from typing import Any

from .candidate import Candidate, Layer


class _Registry(Mapping):
    """Space name -> its class, imported when first asked for: candidates, layers and the names of the spaces
    are torch-free, so a command that stops at a bad setting does not wait for torch to load."""

    def __init__(self, entries: Mapping[str, tuple[str, str]]):
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> type:
        module, cls = self._entries[name]
        return getattr(import_module(f"{__name__}.{module}"), cls)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


SPACES = _Registry({"mobilenetv2": ("mobilenetv2", "MobileNetV2Space"), "fbnet": ("fbnet", "FBNetSpace")})


def create(name: str, **settings: Any):
    """The space registered as `name`, configured by `settings` (ValueError names a bad one)."""
    return SPACES[name](**settings)


__all__ = ["SPACES", "Candidate", "Layer", "create"]
