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
`$LIGHTBAGEL_COMPONENTS` (os.pathsep-separated), `./components`, then the cards shipped with the
package (`sources.shipped`: package data of a wheel, so an installed package finds them from any
folder while a project's own cards of the same name win). A recipe is a file or a name (`tiny`):
`./recipes/NAME.yaml`, then the shipped recipes (`sources.find_recipe`). A card holds the kind's
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
(`schema.CHOICES`, the registries) and value ranges are checked. Nothing is built here.

The steps live in their own modules: sources.py (YAML, `base:` chains, overrides), cards.py (card
lookup), messages.py (one-line errors naming the source) and checks.py (checks after merging).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightbagel.recipe.cards import (
    Choice,
    available_cards,
    component_search_path,
    find_card,
    plan_cards,
    read_card,
)
from lightbagel.recipe.checks import check_values, resolve
from lightbagel.recipe.messages import Origins, RecipeError, flatten, merge_error
from lightbagel.recipe.schema import KINDS, RecipeConfig
from lightbagel.recipe.sources import Layer, available_recipes, find_recipe, parse_override, read_chain, show

__all__ = ["Recipe", "RecipeError", "available_cards", "available_recipes", "component_search_path", "load_recipe"]
PARAM_MAX_CHARS = 500  # the param-value limit MLflow stores enforce (6000 on newer ones; 500 fits all)


@dataclass(frozen=True)
class Recipe:
    config: RecipeConfig  # typed, interpolations resolved
    resolved: DictConfig  # the same, read-only, for logging
    path: Path
    sources: dict[str, str]  # kind -> card file used
    # The root recipe of the `base:` chain (tiny.yaml -> "tiny", for every run made from it): the
    # MLflow experiment its runs compare in (runs/tracking.py).
    family: str = ""

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(self.resolved)

    def flat_params(self) -> dict[str, str]:
        """Dotted key -> value as text, clipped to what MLflow accepts as a param."""
        flat = flatten(OmegaConf.to_container(self.resolved))
        return {key: _clip(str(value)) for key, value in flat.items()}


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Load, merge, type-check and validate a recipe (a file, or a name: `find_recipe`). Raises RecipeError."""
    path = find_recipe(path)
    chain = read_chain(path)
    layers = [layer for _, layer in chain] + [parse_override(item) for item in overrides]
    cards, rest = plan_cards(layers)
    search_path = component_search_path([file for file, _ in chain])
    origins = Origins(recipe=show(path), cards={}, by_key={})
    sources: dict[str, str] = {}
    cfg = OmegaConf.structured(RecipeConfig)
    for kind in KINDS:
        card_file = find_card(kind, cards.get(kind, Choice()), search_path, origins.recipe)
        sources[kind] = str(card_file.resolve())
        origins.cards[kind] = show(card_file)
        _merge(cfg, read_card(kind, card_file), origins)
    for layer in rest:
        _merge(cfg, layer, origins)
    resolved = resolve(cfg, origins)
    check_values(resolved, origins)
    config = OmegaConf.to_object(resolved)
    OmegaConf.set_readonly(resolved, True)
    return Recipe(config=config, resolved=resolved, path=path.resolve(), sources=sources, family=chain[0][0].stem)


def _merge(cfg: DictConfig, layer: Layer, origins: Origins) -> None:
    try:
        cfg.merge_with(layer.data)
    except OmegaConfBaseException as exc:
        raise merge_error(exc, layer.source, layer.data) from None
    origins.record(layer.source, layer.data)


def _clip(text: str) -> str:
    return text if len(text) <= PARAM_MAX_CHARS else text[: PARAM_MAX_CHARS - 3] + "..."
