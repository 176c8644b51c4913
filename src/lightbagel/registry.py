"""Name -> builder, per component kind, resolved lazily.

Each registry maps the names a recipe may use to "module:attr" paths, the way transformers' auto
mappings name their classes (https://huggingface.co/docs/transformers/model_doc/auto): listing and
checking names imports nothing, so validating a recipe imports no torch, and this ground floor
imports no floor above it. A builder's module is imported the first time the builder is asked for.
`register` adds a builder from anywhere else (a plugin, a test module). Each registry is the one
list of the names a recipe may use for its key (recipe/checks.py `REGISTRY_KEYS` validates
against it); adding a backbone is one adapter module, one line here and one card.
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict, Generic, Mapping, Optional, TypeVar

T = TypeVar("T")


class UnknownComponentError(KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str, paths: Optional[Mapping[str, str]] = None) -> None:
        self.kind = kind
        self._paths: Dict[str, str] = dict(paths or {})
        self._builders: Dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def wrap(builder: Callable[..., T]) -> Callable[..., T]:
            known = self._builders.get(name)
            if name in self._paths or (known is not None and known is not builder):
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._builders[name] = builder
            return builder

        return wrap

    def names(self) -> list[str]:
        return sorted({*self._paths, *self._builders})

    def path(self, name: str) -> Optional[str]:
        """The "module:attr" a built-in name resolves to (None for one added with `register`)."""
        return self._paths.get(name)

    def get(self, name: str) -> Callable[..., T]:
        if name in self._builders:
            return self._builders[name]
        if name not in self._paths:
            raise UnknownComponentError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}")
        module, _, attr = self._paths[name].partition(":")
        builder = getattr(importlib.import_module(module), attr)
        self._builders[name] = builder
        return builder


def load_builtins() -> None:
    """Resolves every built-in path: what a broken or renamed adapter module fails."""
    for reg in (UNDERSTANDING, GENERATION, VAE, FUSION, STRATEGY):
        for name in reg.names():
            reg.get(name)


UNDERSTANDING: Registry = Registry("understanding adapter", {
    "qwen2_5_vl": "lightbagel.backbones.understanding.qwen2_5_vl:build_qwen2_5_vl",
    "qwen2_vl": "lightbagel.backbones.understanding.qwen2_vl:build_qwen2_vl",
})
GENERATION: Registry = Registry("generation adapter", {
    "sd3": "lightbagel.backbones.generation.sd3:build_sd3",
    "wan": "lightbagel.backbones.generation.wan:build_wan",
})
VAE: Registry = Registry("vae adapter", {
    "pixel": "lightbagel.backbones.generation.vae:build_pixel_autoencoder",
    "sd3_vae": "lightbagel.backbones.generation.sd3:build_sd3_vae",
    "wan_vae": "lightbagel.backbones.generation.vae:build_wan_vae",
})
FUSION: Registry = Registry("fusion block", {
    "double_fusion": "lightbagel.fusion.blocks:build_double_fusion",
    "none": "lightbagel.fusion.none:build_no_fusion",
})
STRATEGY: Registry = Registry("trainer strategy", {
    "auto": "lightbagel.training.strategy:auto",
    "ddp": "lightbagel.training.strategy:ddp",
    "fsdp2": "lightbagel.training.strategy:fsdp2",
})
