"""The VAE objective (objective.vae_weight): what pre-trains the shipped tiny Wan VAE."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightbagel.recipe import load_recipe
from lightbagel.training.module import LightBagelModule, objective_tasks

REPO = Path(__file__).resolve().parents[2]
VAE_RECIPE = REPO / "recipes" / "pretrain" / "tiny_vae.yaml"


def vae_module(*overrides: str) -> LightBagelModule:
    return LightBagelModule(load_recipe(VAE_RECIPE, list(overrides)).config)


def test_the_vae_objective_trains_images_only_and_needs_an_unfrozen_codec():
    cfg = load_recipe(VAE_RECIPE).config
    assert objective_tasks(cfg) == ("t2i", "edit")
    with pytest.raises(ValueError, match="generation.vae.freeze=false"):
        vae_module("generation.vae.freeze=true")
    with pytest.raises(ValueError, match="objective.vae_weight 0.0: each must be >= 0 and at least one > 0"):
        vae_module("objective.vae_weight=0")


def test_a_tiny_wan_vae_overfits_one_image(make_batch):
    torch.manual_seed(0)
    module = vae_module()
    batch = make_batch(module.model, n=1)
    params = [p for p in module.model.parameters() if p.requires_grad]
    assert params and all(n.startswith("gen.vae.") for n, p in module.model.named_parameters() if p.requires_grad)
    optimizer = torch.optim.Adam(params, lr=2e-3)
    losses = []
    for _ in range(60):
        loss, logged = module.weighted_loss(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(logged["loss/vae_l1"].item())
    assert set(logged) == {"loss/vae_l1", "loss/vae_kl"}
    # L1 of a random decoder on a grey scene is ~0.8; one image is learnt far below it.
    assert losses[-1] < 0.25 * losses[0], losses[::10]


def test_the_export_recipe_carries_the_measured_latent_statistics(make_batch):
    module = vae_module()
    batch = make_batch(module.model, n=4)
    with torch.no_grad():
        module.weighted_loss(batch, 0)
        images = torch.cat([batch.target, batch.source[batch.has_source]])
        _, _, mean = module.model.gen.vae.reconstruct(images)
    vae_config = module.trained_recipe().generation.vae.config
    # After one batch the running moments are that batch's own.
    assert vae_config["latents_mean"] == pytest.approx(mean.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert vae_config["latents_std"] == pytest.approx(mean.std(dim=(0, 2, 3), correction=0).tolist(), abs=1e-5)
    assert module.recipe.generation.vae.config.get("latents_mean") is None  # the recipe itself is unchanged
