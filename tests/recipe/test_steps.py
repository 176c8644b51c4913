"""Tokens per optimizer step: a recipe value from which accumulation follows for any rank count."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightbagel.recipe import load_recipe
from lightbagel.recipe.steps import StepSizeError, accumulation, world_size

PAPER = Path(__file__).resolve().parents[2] / "recipes" / "lightbagel_7b_5b.yaml"
PAPER_TOKENS_PER_STEP = 32 * 16_384  # ~0.5M: the paper's ~35B tokens over 70K steps


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_the_paper_recipe_trains_its_tokens_per_step_on_any_rank_count(ranks):
    cfg = load_recipe(PAPER, [f"trainer.devices={ranks}"]).config
    world = world_size(cfg.trainer)
    assert world == ranks and cfg.trainer.tokens_per_step == PAPER_TOKENS_PER_STEP
    assert accumulation(cfg, world) * world * cfg.data.packing.token_budget == PAPER_TOKENS_PER_STEP


def test_nodes_count_as_ranks():
    cfg = load_recipe(PAPER, ["trainer.devices=8", "trainer.num_nodes=4"]).config
    assert world_size(cfg.trainer) == 32 and accumulation(cfg, 32) == 1


def test_without_tokens_per_step_the_accumulation_is_the_recipe_value():
    cfg = load_recipe(PAPER, ["trainer.tokens_per_step=null", "trainer.accumulate_grad_batches=3"]).config
    assert accumulation(cfg, 8) == 3


@pytest.mark.parametrize("overrides, words", [
    (["trainer.devices=3"], "not a multiple of 3 ranks"),
    (["trainer.accumulate_grad_batches=2"], "remove trainer.accumulate_grad_batches 2"),
    (["data.packing.token_budget=null"], "needs data.packing.token_budget"),
])
def test_a_figure_the_ranks_cannot_give_is_one_line(overrides, words):
    cfg = load_recipe(PAPER, overrides).config
    with pytest.raises(StepSizeError, match=words) as err:
        accumulation(cfg, world_size(cfg.trainer))
    assert "\n" not in str(err.value) and "trainer.tokens_per_step" in str(err.value)
