"""Checks of a merged recipe: interpolations resolve, values lie in range, names are allowed."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightbagel import registry
from lightbagel.errors import first_line
from lightbagel.recipe.messages import Origins, RecipeError
from lightbagel.recipe.schema import CHOICES, RANGES

# Keys that name code: the registry the code dispatches on is their one list of allowed names.
# Looked up on the module at call time so tests can swap a registry in.
REGISTRY_KEYS = {
    "understanding.adapter": "UNDERSTANDING",
    "generation.adapter": "GENERATION",
    "generation.vae.adapter": "VAE",
    "fusion.block": "FUSION",
    "trainer.strategy": "STRATEGY",
}



def resolve(cfg: DictConfig, origins: Origins) -> DictConfig:
    resolved = copy.deepcopy(cfg)
    try:
        OmegaConf.resolve(resolved)  # resolves in place; fails on the first bad interpolation
        missing = sorted(OmegaConf.missing_keys(resolved))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        msg = first_line(exc)
        raise RecipeError(f"{origins.of(key)}: {key}: {msg}") from None
    if missing:
        raise RecipeError(f"{origins.of(missing[0])}: {missing[0]}: no value (???); set it in the card")
    return resolved


def check_values(cfg: DictConfig, origins: Origins) -> None:
    for pattern, (wanted, ok) in RANGES.items():
        for key, value in _range_values(cfg, pattern):
            if value is not None and not ok(value):
                raise RecipeError(f"{origins.of(key)}: {key}: must be {wanted}, got {value!r}")
    for pattern in [*CHOICES, *REGISTRY_KEYS]:
        label, allowed = allowed_values(pattern)
        for key, value in _range_values(cfg, pattern):
            if value not in allowed:
                listed = ", ".join(allowed) or "(none registered)"
                raise RecipeError(f"{origins.of(key)}: {key}: unknown {label} {value!r}; allowed: {listed}")


def _range_values(cfg: DictConfig, pattern: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for a RANGES or CHOICES key; "a[].b" stands for key b of every item of list a."""
    head, sep, tail = pattern.partition("[]")
    if not sep:
        yield pattern, OmegaConf.select(cfg, pattern)
        return
    for i, item in enumerate(OmegaConf.select(cfg, head) or ()):
        key = f"{head}[{i}]{tail}"
        yield key, OmegaConf.select(item, tail.lstrip(".")) if tail else item


def allowed_values(key: str) -> tuple[str, Sequence[str]]:
    """What the values of `key` are called in messages, and the allowed ones."""
    if key in REGISTRY_KEYS:
        reg = getattr(registry, REGISTRY_KEYS[key])
        return reg.kind, reg.names()
    return "value", CHOICES[key]
