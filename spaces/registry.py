"""One shape for every plug-in point: spaces here; export backends, latency runners and data sets in `search`. A
registry maps a name to where its object lives (`"package.module:attribute"`, or `"package.module"` for a module
that is the plug-in), imported when first asked for: listing the names loads nothing, and one plug-in's
dependencies (torch, LiteRT, a phone's tools) never load with another's. `register` adds one while a program runs
(a user's own, or a test's)."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module
from typing import Any


class Registry(Mapping[str, Any]):
    def __init__(self, kind: str, entries: Mapping[str, str]):
        self.kind = kind  # what a registered thing is, for messages: "space", "backend", ...
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> Any:
        module, _, attribute = self._entries[name].partition(":")
        loaded = import_module(module)
        return getattr(loaded, attribute) if attribute else loaded

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> dict[str, str]:
        """Name -> where it lives, as registered (a copy)."""
        return dict(self._entries)

    def load(self, name: str) -> Any:
        """The object registered as `name`; ValueError names the choices."""
        if name not in self._entries:
            raise ValueError(f"{self.kind}: one of {', '.join(self._entries)}, got {name!r}")
        return self[name]

    def register(self, name: str, where: str) -> None:
        """Add (or replace) `name`, found at `where` when first asked for."""
        self._entries[name] = where
