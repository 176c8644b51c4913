"""Compose a recipe: one YAML file of card names and overrides -> a typed `RecipeConfig`.

Recipe format::

    name: tiny                        # run name, usable as ${name} anywhere
    seed: 0
    output_dir: outputs/${name}
    base: tiny.yaml                   # optional: inherit a recipe (path relative to this file)
    understanding: tiny_qwen2_5_vl    # a card name ...
    generation: {card: tiny_wan_pixel, freeze: true}   # ... or a card plus overrides of its keys
    fusion: double_fusion
    data: shapes
    trainer: cpu
    objective: {timestep_shift: 1.0}  # plain sections: no cards
    optim: {lr: 1.0e-3}

Cards. Each kind (understanding, generation, fusion, data, trainer) names a card: card NAME of
kind K is the file `K/NAME.yaml` in the first component directory holding it, searched in
`<recipe dir>/../components` (the recipe's, then each base's), every directory in
`$LIGHTBAGEL_COMPONENTS` (os.pathsep-separated), `./components`, then the cards shipped inside the
package (`lightbagel/components`, so an installed package finds them from any folder while a
project's own cards of the same name win). A card holds the kind's
schema fields (schema.py) except `card`, which is filled in with the card's name.

Inheritance. With `base`, the base recipe applies first and this file overrides it. For a kind,
a mapping without `card` keeps the current card and overrides its keys; a string (or a mapping
with `card`) swaps the card and drops the overrides given for the previous card.

Command line. Dotlist strings whose values are parsed as YAML (OmegaConf.from_dotlist):
`trainer.max_steps=50`, `understanding=other_card` (swap), `understanding.config.text_config.
hidden_size=32`. They apply in order after the recipe, with the same swap rule.

Merge order per kind: schema defaults <- card <- recipe overrides (base first) <- command line.
Each source is merged on its own turn, so an unknown key or a wrong type is reported against the
file (or "command line") that wrote it. Then interpolations are resolved and closed choices
(`schema.CHOICES`, the adapter registries) and value ranges are checked. Nothing is built here.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from lightbagel import registry
from lightbagel.recipe.schema import CHOICES, KINDS, RecipeConfig

CLI = "command line"
ENV_VAR = "LIGHTBAGEL_COMPONENTS"
PARAM_MAX_CHARS = 500  # MLflow's historical limit on a param value
SHIPPED_COMPONENTS = Path(__file__).resolve().parent.parent / "components"  # package data

# Registry holding the allowed names of a key; looked up on the module at call time so tests
# can swap a registry in.
_REGISTRY_KEYS = {
    "understanding.adapter": "UNDERSTANDING",
    "generation.adapter": "GENERATION",
    "generation.vae.adapter": "VAE",
    "fusion.block": "FUSION",
}
_UNIT = ("in [0, 1]", lambda v: 0.0 <= v <= 1.0)
_POSITIVE = ("> 0", lambda v: v > 0)
_RANGES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "objective.text_dropout": _UNIT,
    "objective.vae_dropout": _UNIT,
    "objective.vit_dropout": _UNIT,
    "fusion.depth_offset": _UNIT,
    "objective.timestep_shift": _POSITIVE,
    "trainer.max_steps": _POSITIVE,
    "data.batch_size": _POSITIVE,
}
# Dotted names only: catches "KEY VALUE" typos and a stray "=" before OmegaConf guesses a key.
_OVERRIDE_KEY = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*$")


class RecipeError(ValueError):
    """A recipe problem in one line: the file (or "command line"), the dotted key, the fix."""


@dataclass(frozen=True)
class Recipe:
    config: RecipeConfig  # typed, interpolations resolved
    resolved: DictConfig  # the same, read-only, for logging
    path: Path
    sources: dict[str, str]  # kind -> card file used

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(self.resolved)

    def flat_params(self) -> dict[str, str]:
        """Dotted key -> value as text, clipped to what MLflow accepts as a param."""
        flat = _flatten(OmegaConf.to_container(self.resolved))
        return {key: _clip(str(value)) for key, value in flat.items()}


@dataclass
class _Layer:
    source: str  # file shown to the user, or CLI
    data: dict[str, Any]  # recipe-shaped mapping, interpolations unresolved
    kind: str | None = None  # the kind this layer overrides; None for plain keys


@dataclass
class _Origins:
    """Which source set each dotted key, so a check after merging can name the file."""

    recipe: str
    cards: dict[str, str]  # kind -> card file shown
    by_key: dict[str, str]

    def record(self, layer: _Layer) -> None:
        self.by_key.update(dict.fromkeys(_flatten(layer.data), layer.source))

    def of(self, key: str) -> str:
        """The source of `key` or its nearest enclosing key; for untouched defaults, the card."""
        parts = _key_parts(key)
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in self.by_key:
                return self.by_key[".".join(parts[:n])]
        below = [src for k, src in self.by_key.items() if key and k.startswith(key + ".")]
        if below:
            return below[-1]
        return self.cards.get(parts[0] if parts else "", self.recipe)


@dataclass
class _Choice:
    card: str | None = None
    source: str = ""  # who chose the card


def available_recipes(directory: str | Path) -> list[str]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted({p.stem for p in directory.iterdir() if p.suffix in (".yaml", ".yml")})


def available_cards(kind: str, search_path: Sequence[str | Path]) -> list[str]:
    return sorted({card.stem for d in search_path for card in (Path(d) / kind).glob("*.yaml")})


def component_search_path(recipe_files: Sequence[str | Path]) -> list[Path]:
    """Component directories in lookup order (see the module docstring), without repeats."""
    dirs = [Path(f).resolve().parent.parent / "components" for f in recipe_files]
    dirs += [Path(d) for d in os.environ.get(ENV_VAR, "").split(os.pathsep) if d]
    dirs += [Path("components"), SHIPPED_COMPONENTS]
    unique: dict[Path, None] = {}
    for d in dirs:
        unique.setdefault(d.resolve(), None)
    return list(unique)


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Load, merge, type-check and validate a recipe. Raises RecipeError."""
    path = Path(path)
    chain = _read_chain(path)
    layers = [layer for _, layer in chain] + [_parse_override(item) for item in overrides]
    cards, rest = _plan(layers)
    search_path = component_search_path([file for file, _ in chain])
    origins = _Origins(recipe=_show(path), cards={}, by_key={})
    sources: dict[str, str] = {}
    cfg = OmegaConf.structured(RecipeConfig)
    for kind in KINDS:
        card_file = _find_card(kind, cards.get(kind, _Choice()), search_path, origins.recipe)
        sources[kind] = str(card_file.resolve())
        origins.cards[kind] = _show(card_file)
        _merge(cfg, _read_card(kind, card_file), origins)
    for layer in rest:
        _merge(cfg, layer, origins)
    resolved = _resolve(cfg, origins)
    _check_values(resolved, origins)
    config = OmegaConf.to_object(resolved)
    OmegaConf.set_readonly(resolved, True)
    return Recipe(config=config, resolved=resolved, path=path.resolve(), sources=sources)


def _show(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _read_yaml(path: Path) -> dict[str, Any]:
    label = _show(path)
    try:
        node = OmegaConf.load(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{label}{where}: invalid YAML: {problem}") from None
    except OSError as exc:
        raise RecipeError(f"{label}: cannot read: {exc.strerror}") from None
    if not isinstance(node, DictConfig):
        raise RecipeError(f"{label}: expected a mapping of keys at the top level")
    return OmegaConf.to_container(node, resolve=False)  # type: ignore[return-value]


def _read_chain(path: Path) -> list[tuple[Path, _Layer]]:
    """The recipe and its bases, base first; `base` keys removed."""
    chain: list[tuple[Path, _Layer]] = []
    seen: set = set()
    referrer: str | None = None
    while True:
        where = f"{referrer}: base: " if referrer else ""
        if not path.is_file():
            known = ", ".join(available_recipes(path.parent)) or "(none)"
            here = f"available in {_show(path.parent)}: {known}"
            raise RecipeError(f"{where}{_show(path)}: recipe not found; {here}")
        if path.resolve() in seen:
            raise RecipeError(f"{where}{_show(path)} is already in the chain (a base cycle)")
        seen.add(path.resolve())
        data = _read_yaml(path)
        base = data.pop("base", None)
        chain.append((path, _Layer(_show(path), data)))
        if base is None:
            return chain[::-1]
        if not isinstance(base, str):
            raise RecipeError(f"{_show(path)}: base: expected a recipe path, got {base!r}")
        referrer, path = _show(path), path.parent / base


def _parse_override(item: str) -> _Layer:
    key, sep, value = item.partition("=")
    if not sep or not _OVERRIDE_KEY.match(key.strip()):
        raise RecipeError(
            f"{CLI}: bad override {item!r} (expected KEY=VALUE, e.g. trainer.max_steps=50)"
        )
    try:
        parsed = OmegaConf.from_dotlist([f"{key.strip()}={value}"])
    except (yaml.YAMLError, OmegaConfBaseException, ValueError) as exc:
        raise RecipeError(f"{CLI}: bad override {item!r}: {_first_line(str(exc))}") from None
    return _Layer(CLI, OmegaConf.to_container(parsed, resolve=False))  # type: ignore[arg-type]


def _plan(layers: Sequence[_Layer]) -> tuple[dict[str, _Choice], list[_Layer]]:
    """Split the layers into each kind's card choice and the override layers still in force."""
    cards: dict[str, _Choice] = {}
    rest: list[_Layer] = []
    for layer in layers:
        plain = {k: v for k, v in layer.data.items() if k not in KINDS}
        if plain:
            rest.append(_Layer(layer.source, plain))
        for kind in (k for k in KINDS if k in layer.data):
            body = layer.data[kind]
            if isinstance(body, str):
                body = {"card": body}
            if not isinstance(body, dict):
                raise RecipeError(
                    f"{layer.source}: {kind}: expected a card name or a mapping, got {body!r}"
                )
            body = dict(body)
            card = body.pop("card", None)
            if card is not None:
                if not isinstance(card, str):
                    raise RecipeError(
                        f"{layer.source}: {kind}.card: expected a card name, got {card!r}"
                    )
                # Overrides were written for the previous card, so a swap drops them.
                cards[kind] = _Choice(card, layer.source)
                rest = [r for r in rest if r.kind != kind]
            if body:
                rest.append(_Layer(layer.source, {kind: body}, kind))
    return cards, rest


def _find_card(kind: str, choice: _Choice, search_path: Sequence[Path], recipe: str) -> Path:
    allowed = ", ".join(available_cards(kind, search_path)) or "(none)"
    if choice.card is None:
        raise RecipeError(
            f"{recipe}: {kind}: no card chosen; set '{kind}: NAME'; allowed: {allowed}"
        )
    if Path(choice.card).name == choice.card:  # a bare name, never a path out of the tree
        for directory in search_path:
            candidate = directory / kind / f"{choice.card}.yaml"
            if candidate.is_file():
                return candidate
    searched = ", ".join(_show(d / kind) for d in search_path)
    raise RecipeError(
        f"{choice.source}: {kind} card {choice.card!r} not found in {searched}; allowed: {allowed}"
    )


def _read_card(kind: str, path: Path) -> _Layer:
    data = _read_yaml(path)
    if "card" in data:
        raise RecipeError(
            f"{_show(path)}: {kind}.card: a card must not set 'card' (its file name is its name)"
        )
    return _Layer(_show(path), {kind: {**data, "card": path.stem}}, kind)


def _merge(cfg: DictConfig, layer: _Layer, origins: _Origins) -> None:
    try:
        cfg.merge_with(layer.data)
    except OmegaConfBaseException as exc:
        raise _merge_error(exc, layer) from None
    origins.record(layer)


def _merge_error(exc: OmegaConfBaseException, layer: _Layer) -> RecipeError:
    key = getattr(exc, "full_key", None) or _locate(layer.data)
    if isinstance(exc, ConfigKeyError):
        allowed = _allowed_keys(key, with_base=layer.source != CLI)
        tail = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return RecipeError(f"{layer.source}: unknown key {key!r}{tail}")
    expected = _type_name(_schema_type(_key_parts(key)))
    written = OmegaConf.create(layer.data)  # what the source wrote, for the message
    got = OmegaConf.select(written, key, default=None, throw_on_resolution_failure=False)
    if expected:
        return RecipeError(f"{layer.source}: {key}: expected {expected}, got {got!r}")
    return RecipeError(
        f"{layer.source}: {key}: {_first_line(getattr(exc, 'msg', None) or str(exc))}"
    )


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


def _resolve(cfg: DictConfig, origins: _Origins) -> DictConfig:
    resolved = copy.deepcopy(cfg)
    try:
        OmegaConf.resolve(resolved)  # resolves in place; fails on the first bad interpolation
        missing = sorted(OmegaConf.missing_keys(resolved))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        msg = _first_line(getattr(exc, "msg", None) or str(exc))
        raise RecipeError(f"{origins.of(key)}: {key}: {msg}") from None
    if missing:
        raise RecipeError(
            f"{origins.of(missing[0])}: {missing[0]}: no value (???); set it in the card"
        )
    return resolved


def _check_values(cfg: DictConfig, origins: _Origins) -> None:
    for key, (wanted, ok) in _RANGES.items():
        value = OmegaConf.select(cfg, key)
        if not ok(value):
            raise RecipeError(f"{origins.of(key)}: {key}: must be {wanted}, got {value!r}")
    # Closed sets before registries: registry lookups may import the adapter modules.
    for key in [k for k in CHOICES if k not in _REGISTRY_KEYS] + list(_REGISTRY_KEYS):
        label, allowed = _allowed_values(key)
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            listed = ", ".join(allowed) or "(none registered)"
            raise RecipeError(
                f"{origins.of(key)}: {key}: unknown {label} {value!r}; allowed: {listed}"
            )


def _allowed_values(key: str) -> tuple[str, Sequence[str]]:
    if key not in _REGISTRY_KEYS:
        return "value", CHOICES[key]
    reg = getattr(registry, _REGISTRY_KEYS[key])
    # Fusion blocks are checked against CHOICES until one registers itself.
    return reg.kind, reg.names() or CHOICES.get(key, ())


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _key_parts(key: str) -> list[str]:
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
    parent = _strip_optional(_schema_type(_key_parts(key)[:-1]))
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


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf keys of nested mappings; lists and empty mappings are leaves."""
    if not isinstance(data, dict) or (not data and prefix):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _clip(text: str) -> str:
    return text if len(text) <= PARAM_MAX_CHARS else text[: PARAM_MAX_CHARS - 3] + "..."
