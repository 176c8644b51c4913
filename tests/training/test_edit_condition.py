"""`objective.edit_condition`: which encoders see an edit's source, in training and in sampling."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lightbagel.inference.sampler import Conditioning, restrict_edit
from lightbagel.inputs import VIT
from lightbagel.recipe.schema import ObjectiveConfig
from lightbagel.training.module import drop_conditions

NO_DROPOUT = ObjectiveConfig(text_dropout=0.0, vae_dropout=0.0, vit_dropout=0.0)


@pytest.mark.parametrize("mode, vit_seen, vae_seen", [("both", True, True), ("vit", True, False), ("vae", False, True)])
def test_training_hides_the_other_encoder(mode, vit_seen, vae_seen, tiny_model, make_batch):
    batch = make_batch(tiny_model, n=4)
    assert batch.has_source.any() and (batch.und.segment == VIT).any()
    und, source_valid = drop_conditions(batch, replace(NO_DROPOUT, edit_condition=mode))
    vit = und.segment == VIT
    assert bool(und.valid[vit].all()) == vit_seen and not (und.valid[vit].any() and not vit_seen)
    assert torch.equal(source_valid, batch.has_source & vae_seen)


@pytest.mark.parametrize("mode, vit_seen, vae_seen", [("both", True, True), ("vit", True, False), ("vae", False, True)])
def test_sampling_hides_what_training_hid(mode, vit_seen, vae_seen, tiny_model, make_batch):
    batch = make_batch(tiny_model, n=4)
    cond = Conditioning(batch.und, batch.source[:, None], batch.has_source[:, None], batch.source_order[:, None])
    out = restrict_edit(cond, mode)
    vit = batch.und.segment == VIT
    assert bool(out.und.valid[vit].all()) == vit_seen and not (out.und.valid[vit].any() and not vit_seen)
    assert torch.equal(out.source_valid[:, 0], batch.has_source & vae_seen)


def test_recipe_rejects_an_unknown_edit_condition():
    from pathlib import Path

    from lightbagel.recipe import RecipeError, load_recipe

    tiny = Path(__file__).resolve().parents[2] / "recipes" / "tiny.yaml"
    with pytest.raises(RecipeError, match="objective.edit_condition.*allowed: both, vit, vae"):
        load_recipe(tiny, ["objective.edit_condition=pixels"])
