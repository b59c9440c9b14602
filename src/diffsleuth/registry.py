"""A name -> object registry whose built-in entries are imported only when first asked for.

Detectors, training recipes and feature extractors each keep one, so the CLI starts fast and a
missing optional dependency only matters for the method that needs it.
"""

from __future__ import annotations

import importlib
from typing import Generic, TypeVar

T = TypeVar("T")


class LazyRegistry(Generic[T]):
    def __init__(self, kind: str, builtin_modules: dict[str, str]) -> None:
        self.kind = kind
        self.builtin_modules = dict(builtin_modules)
        self.entries: dict[str, T] = {}

    def register(self, name: str, value: T) -> T:
        self.entries[name] = value
        return value

    def names(self) -> list[str]:
        return sorted(set(self.entries) | set(self.builtin_modules))

    def __contains__(self, name: object) -> bool:
        return name in self.entries or name in self.builtin_modules

    def get(self, name: str) -> T:
        if name not in self.entries and name in self.builtin_modules:
            importlib.import_module(self.builtin_modules[name])
        if name not in self.entries:
            raise KeyError(f"unknown {self.kind} {name!r} (registered: {', '.join(self.names())})")
        return self.entries[name]
