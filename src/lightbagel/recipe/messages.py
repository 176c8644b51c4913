"""One-line recipe errors: which source wrote a key, and what the schema allows there."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Union, get_args, get_origin, get_type_hints

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from lightbagel.errors import first_line
from lightbagel.recipe.schema import RecipeConfig

CLI = "command line"


class RecipeError(ValueError):
    """A recipe problem in one line: the file (or "command line"), the dotted key, the fix."""


@dataclass
class Origins:
    """Which source set each dotted key, so a check after merging can name the file."""

    recipe: str
    cards: dict[str, str]  # kind -> card file shown
    by_key: dict[str, str]

    def record(self, source: str, data: dict[str, Any]) -> None:
        self.by_key.update(dict.fromkeys(flatten(data), source))

    def of(self, key: str) -> str:
        """The source of `key` or its nearest enclosing key; for untouched defaults, the card."""
        parts = key_parts(key)
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in self.by_key:
                return self.by_key[".".join(parts[:n])]
        below = [src for k, src in self.by_key.items() if key and k.startswith(key + ".")]
        if below:
            return below[-1]
        return self.cards.get(parts[0] if parts else "", self.recipe)


def merge_error(exc: OmegaConfBaseException, source: str, data: dict[str, Any]) -> RecipeError:
    """The error for `data` (written by `source`) failing to merge into the schema."""
    key = getattr(exc, "full_key", None) or _locate(data)
    if isinstance(exc, ConfigKeyError):
        allowed = _allowed_keys(key, with_base=source != CLI)
        tail = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return RecipeError(f"{source}: unknown key {key!r}{tail}")
    expected = _type_name(_schema_type(key_parts(key)))
    written = OmegaConf.create(data)  # what the source wrote, for the message
    got = OmegaConf.select(written, key, default=None, throw_on_resolution_failure=False)
    if expected:
        return RecipeError(f"{source}: {key}: expected {expected}, got {got!r}")
    return RecipeError(f"{source}: {key}: {first_line(exc)}")


def _locate(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> str:
    """The dotted key of the first value that fails to merge alone (OmegaConf omits it for some
    type errors, e.g. a scalar given for a section)."""
    for key, value in data.items():
        path = (*prefix, str(key))
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        try:
            OmegaConf.merge(OmegaConf.structured(RecipeConfig), nested)
        except OmegaConfBaseException:
            return _locate(value, path) if isinstance(value, dict) and value else ".".join(path)
    return ".".join(prefix)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def key_parts(key: str) -> list[str]:
    return re.findall(r"[^.\[\]]+", key or "")


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _schema_type(parts: Sequence[str]) -> Any:
    """The declared type at a key path, or None where the schema is open (Any, Dict[str, Any])."""
    tp: Any = RecipeConfig
    for part in parts:
        tp = _strip_optional(tp)
        if is_dataclass(tp):
            tp = _hints(tp).get(part)
        elif get_origin(tp) in (list, dict):
            tp = get_args(tp)[-1]
        else:
            return None
    return tp


def _allowed_keys(key: str, with_base: bool) -> list[str]:
    parent = _strip_optional(_schema_type(key_parts(key)[:-1]))
    if not is_dataclass(parent):
        return []
    names = [f.name for f in fields(parent)]
    if parent is RecipeConfig and with_base:
        names.append("base")
    return sorted(names)


def _type_name(tp: Any) -> str:
    if tp is None or tp is Any:
        return ""
    inner = _strip_optional(tp)
    if inner is not tp:
        return f"{_type_name(inner)} or null"
    if is_dataclass(tp) or get_origin(tp) is dict:
        return "a mapping"
    if get_origin(tp) is list:
        return f"a list of {_type_name(get_args(tp)[0]) or 'values'}"
    return getattr(tp, "__name__", str(tp))


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf keys of nested mappings; lists and empty mappings are leaves."""
    if not isinstance(data, dict) or (not data and prefix):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat
