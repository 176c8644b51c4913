"""Every trainable weight gets a gradient before the optimizer steps, reached by the loss or not."""

from __future__ import annotations

import torch

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
