"""A small name -> builder registry per component kind.

Adapters register themselves where they are defined, so adding a backbone is one file plus one
card and the core never grows `if name == ...` chains. Each registry is the one list of the names a
recipe may use for its key (recipe/checks.py `REGISTRY_KEYS` validates against it).
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict, Generic, TypeVar

T = TypeVar("T")

# Modules whose import registers the built-in components; loaded on first lookup so that
# `import lightbagel` stays cheap.
_BUILTIN_MODULES = (
    "lightbagel.backbones.understanding",
    "lightbagel.backbones.generation",
    "lightbagel.fusion",
    "lightbagel.training.strategy",
)


class UnknownComponentError(KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: Dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def wrap(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._builders and self._builders[name] is not builder:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._builders[name] = builder
            return builder

        return wrap

    def names(self) -> list[str]:
        load_builtins()
        return sorted(self._builders)

    def get(self, name: str) -> Callable[..., T]:
        load_builtins()
        if name not in self._builders:
            raise UnknownComponentError(
                f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}"
            )
        return self._builders[name]


def load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


UNDERSTANDING: Registry = Registry("understanding adapter")
GENERATION: Registry = Registry("generation adapter")
VAE: Registry = Registry("vae adapter")
FUSION: Registry = Registry("fusion block")
STRATEGY: Registry = Registry("trainer strategy")
