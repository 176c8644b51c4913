"""LightningModule hooks: gradients for every trainable weight before the optimizer steps, reached by
the loss or not; the recipe in every checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from lightbagel.model_folder import parse_recipe
from lightbagel.training.module import LightBagelModule


def test_weights_the_loss_never_reaches_get_zero_gradients_and_adamw_state(tiny_recipe, make_batch):
    module = LightBagelModule(tiny_recipe.config)
    module.configure_model()
    optimizer = module.configure_optimizers()["optimizer"]
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    loss, _ = module.flow_matching_loss(make_batch(module.model), seeds=list(range(4)))
    loss.backward()
    unreached = [p for p in trainable if p.grad is None]
    assert unreached  # the und-side output of the last fusion blocks: else this test proves nothing
    module.on_before_optimizer_step(optimizer)
    assert all(p.grad is not None for p in trainable)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in unreached)
    optimizer.step()
    assert all(set(optimizer.state[p]) >= {"exp_avg", "exp_avg_sq"} for p in trainable)


def test_every_checkpoint_carries_the_recipe_being_trained(tiny_recipe):
    module = LightBagelModule(tiny_recipe.config)
    saves = [{}, {}]
    for checkpoint in saves:
        module.on_save_checkpoint(checkpoint)
    assert parse_recipe(saves[0]["recipe_yaml"], Path("ckpt")) == tiny_recipe.config
    assert saves[1]["recipe_yaml"] == saves[0]["recipe_yaml"]
