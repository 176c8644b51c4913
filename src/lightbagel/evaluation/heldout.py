"""Held-out flow-matching loss: a sensitive, deterministic score for short runs.

Exact image scores stay near zero until a model draws clean shapes; this loss on fixed held-out
samples, fixed noise and an even grid of flow times separates runs long before that.
"""

from __future__ import annotations

import torch

from lightbagel import flow_matching as fm
from lightbagel.data.collate import Collator
from lightbagel.inputs import gen_inputs
from lightbagel.model import LightBagel
from lightbagel.shapes.heldout import validation_samples


@torch.no_grad()
def heldout_loss(model: LightBagel, image_size: int, vit_size: int, n: int = 64, seed: int = 4321) -> dict[str, float]:
    """Mean velocity error over n held-out samples (half T2I, half edit) at t = (i + 0.5) / n."""
    samples = validation_samples(n, image_size, seed=seed)
    batch = Collator(model.und.processor, vit_size)(samples)
    device = next(model.parameters()).device
    gen = model.gen
    x0 = gen.vae.encode(batch.target.to(device))
    source = gen.vae.encode(batch.source.to(device))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(device, x0.dtype)
    t = ((torch.arange(n, dtype=torch.float32) + 0.5) / n).to(device)
    has_source = batch.has_source.to(device)
    inputs = gen_inputs(fm.interpolate(x0, noise, t), t, source, has_source, batch.source_order.to(device))
    out = model(batch.und.to(device), inputs)
    n_target = gen.tokens_per_slot(*x0.shape[-2:])
    target = gen.patchify(fm.velocity(x0, noise).unsqueeze(2))
    per_sample = (out.velocity[:, -n_target:].float() - target.float()).pow(2).mean(dim=(1, 2))
    return {"heldout_loss": per_sample.mean().item(), "heldout_loss_t2i": per_sample[~has_source].mean().item(),
            "heldout_loss_edit": per_sample[has_source].mean().item()}
