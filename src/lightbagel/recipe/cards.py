"""Card lookup: which card each kind uses, and where its file is (search path in compose.py)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lightbagel.recipe.messages import RecipeError
from lightbagel.recipe.schema import KINDS
from lightbagel.recipe.sources import Layer, read_yaml, shipped, show

ENV_VAR = "LIGHTBAGEL_COMPONENTS"


@dataclass
class Choice:
    card: str | None = None
    source: str = ""  # who chose the card


def available_cards(kind: str, search_path: Sequence[str | Path]) -> list[str]:
    return sorted({card.stem for d in search_path for card in (Path(d) / kind).glob("*.yaml")})


SHIPPED_COMPONENTS = shipped("components")


def component_search_path(recipe_files: Sequence[str | Path]) -> list[Path]:
    """Component directories in lookup order (see recipe/compose.py), without repeats."""
    dirs = [Path(f).resolve().parent.parent / "components" for f in recipe_files]
    dirs += [Path(d) for d in os.environ.get(ENV_VAR, "").split(os.pathsep) if d]
    dirs += [Path("components"), SHIPPED_COMPONENTS]
    unique: dict[Path, None] = {}
    for d in dirs:
        unique.setdefault(d.resolve(), None)
    return list(unique)


def plan_cards(layers: Sequence[Layer]) -> tuple[dict[str, Choice], list[Layer]]:
    """Split the layers into each kind's card choice and the override layers still in force."""
    cards: dict[str, Choice] = {}
    rest: list[Layer] = []
    for layer in layers:
        plain = {k: v for k, v in layer.data.items() if k not in KINDS}
        if plain:
            rest.append(Layer(layer.source, plain))
        for kind in (k for k in KINDS if k in layer.data):
            card, body = _card_and_body(layer, kind)
            if card is not None:
                # Overrides were written for the previous card, so a swap drops them.
                cards[kind] = Choice(card, layer.source)
                rest = [r for r in rest if r.kind != kind]
            if body:
                rest.append(Layer(layer.source, {kind: body}, kind))
    return cards, rest


def _card_and_body(layer: Layer, kind: str) -> tuple[str | None, dict]:
    """The card a layer names for `kind` (None: keep the current one) and its key overrides."""
    body = layer.data[kind]
    if isinstance(body, str):
        body = {"card": body}
    if not isinstance(body, dict):
        raise RecipeError(f"{layer.source}: {kind}: expected a card name or a mapping, got {body!r}")
    body = dict(body)
    card = body.pop("card", None)
    if card is not None and not isinstance(card, str):
        raise RecipeError(f"{layer.source}: {kind}.card: expected a card name, got {card!r}")
    return card, body


def find_card(kind: str, choice: Choice, search_path: Sequence[Path], recipe: str) -> Path:
    allowed = ", ".join(available_cards(kind, search_path)) or "(none)"
    if choice.card is None:
        raise RecipeError(f"{recipe}: {kind}: no card chosen; set '{kind}: NAME'; allowed: {allowed}")
    if Path(choice.card).name == choice.card:  # a bare name, never a path out of the tree
        for directory in search_path:
            candidate = directory / kind / f"{choice.card}.yaml"
            if candidate.is_file():
                return candidate
    searched = ", ".join(show(d / kind) for d in search_path)
    raise RecipeError(f"{choice.source}: {kind} card {choice.card!r} not found in {searched}; allowed: {allowed}")


def read_card(kind: str, path: Path) -> Layer:
    data = read_yaml(path)
    if "card" in data:
        raise RecipeError(f"{show(path)}: {kind}.card: a card must not set 'card' (its file name is its name)")
    return Layer(show(path), {kind: {**data, "card": path.stem}}, kind)
