"""A recipe's `pretrain` stage: a run whose export initialises parts of this recipe's model.

Opt-in (`pretrain.recipe` is unset by default): recipes/tiny_pretrained.yaml uses it to freeze a
*pretrained* tiny VLM, as the paper freezes a pretrained Qwen2.5-VL: `lightbagel-fit
recipes/tiny_pretrained.yaml` first trains recipes/tiny_vlm.yaml (once; a later run finds its
export and reuses it) and then starts from its understanding weights. `training/fit.py` drives the
stage from above: it trains the stage recipe first, then builds and trains the main one. The embedded default
(recipes/tiny.yaml) does not, yet: docs/tiny.md has the measured scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from lightbagel.errors import ModelFolderError, first_line
from lightbagel.model import LightBagel
from lightbagel.model_folder import RECIPE, WEIGHTS, read_weights, resolved_recipe
from lightbagel.recipe import Recipe, load_recipe

PARTS = {"understanding": "und", "generation": "gen", "fusion": "fusion"}  # recipe part -> model attribute


def stage_recipe(recipe: Recipe) -> Optional[Recipe]:
    """The stage's recipe (its path is relative to this recipe's file), or None without a stage."""
    pre = recipe.config.pretrain
    if not pre.recipe:
        return None
    unknown = set(pre.parts) - set(PARTS)
    if unknown or not pre.parts:
        raise ValueError(f"pretrain.parts {list(pre.parts)}: allowed values are {', '.join(PARTS)}")
    return load_recipe(Path(recipe.path).parent / pre.recipe, [*pre.overrides, f"output_dir={pre.output_dir}"])


def is_complete(export: Path, stage: Recipe) -> bool:
    """Whether `export` holds a finished run of exactly this stage recipe."""
    if not (export / WEIGHTS).is_file() or not (export / RECIPE).is_file():
        return False
    return resolved_recipe(export / RECIPE) == stage.config


def load_parts(model: LightBagel, export: Path, parts: list[str]) -> None:
    """Copies the named parts' weights from a stage export; every weight of a part must be there."""
    weights = read_weights(export / WEIGHTS)  # a missing or truncated file is one line
    for part in parts:
        prefix = PARTS[part] + "."
        own = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        try:
            result = getattr(model, PARTS[part]).load_state_dict(own, strict=False)
        except RuntimeError as err:  # shape mismatches
            raise ModelFolderError(f"pretrain: {export / WEIGHTS} does not fit this recipe's {part}: "
                             f"{first_line(err)}; use the same card") from None
        if result.missing_keys or result.unexpected_keys:
            raise ModelFolderError(f"pretrain: {export / WEIGHTS} does not fit this recipe's {part} (missing "
                             f"{result.missing_keys[:2]}, unexpected {result.unexpected_keys[:2]}); use the same card")
