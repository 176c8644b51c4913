"""Every recipe under recipes/ (ablations included) composes, validates and builds on the meta device.

The builds read no weights: each card's shipped `config` gives the architecture (model.build_skeleton).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lightbagel.fusion import DoubleFusionBlock, NoFusionBlock
from lightbagel.model import build_skeleton
from lightbagel.recipe import RecipeError, load_recipe
from lightbagel.recipe.sources import SHIPPED_RECIPES

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
RECIPES = sorted(RECIPES_DIR.rglob("*.yaml"))
BLOCKS = {"double_fusion": DoubleFusionBlock, "none": NoFusionBlock}


def test_the_shipped_recipes_are_all_found() -> None:
    assert len(RECIPES) >= 23 and any(p.parent.name == "ablations" for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(RECIPES_DIR)))
def test_shipped_recipe_composes_validates_and_builds(path: Path) -> None:
    recipe = load_recipe(path)
    cfg = recipe.config
    assert cfg.name == path.stem  # its outputs/<name> folder is never another recipe's
    model = build_skeleton(cfg)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert len(model.fusion) == model.gen.num_layers
    assert all(type(block) is BLOCKS[cfg.fusion.block] for block in model.fusion)
    assert max(model.schedule) <= model.und.num_layers
    assert model.edit_condition == cfg.objective.edit_condition


def test_a_recipe_by_name_is_the_projects_own_first_then_the_shipped_one(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no recipes/ here
    assert SHIPPED_RECIPES.resolve() == RECIPES_DIR.resolve()  # a checkout ships its own folder
    assert load_recipe("tiny").path == RECIPES_DIR.resolve() / "tiny.yaml"
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "tiny.yaml").write_text(f"base: {RECIPES_DIR / 'tiny.yaml'}\nname: mine\n")
    assert load_recipe("tiny").config.name == "mine"
    with pytest.raises(RecipeError, match=r"^nope: no recipe of that name .*; available: .*\btiny_vlm\b"):
        load_recipe("nope")
