"""`objective.prediction: sample`: the DiT predicts x0 and the model reads it as a velocity."""

from __future__ import annotations

from dataclasses import replace

import torch

from lightbagel import flow_matching as fm
from lightbagel.inputs import gen_inputs
from lightbagel.model import build_model


def test_the_true_x0_gives_the_true_velocity():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 48, 8, 8, generator=g), torch.randn(3, 48, 8, 8, generator=g)
    t = torch.tensor([0.05, 0.5, 1.0])
    noisy = fm.interpolate(x0, noise, t)
    got = fm.velocity_from_sample(x0, noisy, t.view(-1, 1, 1, 1))
    torch.testing.assert_close(got, fm.velocity(x0, noise), rtol=1e-5, atol=1e-5)
    near_data = torch.tensor([0.0]).view(-1, 1, 1, 1)  # clipped: a finite velocity at the data end
    assert torch.isfinite(fm.velocity_from_sample(x0[:1], fm.interpolate(x0[:1], noise[:1], near_data[:, 0, 0, 0]),
                                                  near_data)).all()


def test_sample_prediction_reads_the_head_output_as_x0(tiny_recipe, make_batch):
    """Same weights, same inputs: the `sample` model's velocity is (x_t - head) / t of the other's head."""
    cfg = tiny_recipe.config
    models = {p: build_model(replace(cfg, objective=replace(cfg.objective, prediction=p))).eval()
              for p in ("velocity", "sample")}
    batch = make_batch(models["velocity"])
    noisy = torch.randn(len(batch), 48, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.linspace(0.2, 0.9, len(batch))
    gen = gen_inputs(noisy, t)
    with torch.no_grad():
        head, velocity = (models[p](batch.und, gen).velocity for p in ("velocity", "sample"))
    tokens = models["sample"].gen.patchify(noisy.unsqueeze(2))
    torch.testing.assert_close(velocity, (tokens - head) / t.view(-1, 1, 1), rtol=1e-4, atol=1e-4)
