"""Euler sampling of the flow-matching ODE with classifier-free guidance on the text."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from lightbagel.inputs import TEXT, UndInputs, gen_inputs
from lightbagel.model import LightBagel
from lightbagel.training.flow_matching import sampling_times


def without_text(und: UndInputs) -> UndInputs:
    """The text-unconditional branch: text tokens hidden exactly as text dropout hides them."""
    keep = und.segment != TEXT
    return replace(und, keep=keep if und.keep is None else und.keep & keep)


@torch.no_grad()
def sample_latents(model: LightBagel, und: UndInputs, shape: tuple[int, ...], steps: int = 20,
                   shift: float = 1.0, text_guidance: float = 1.0, source: Optional[torch.Tensor] = None,
                   source_valid: Optional[torch.Tensor] = None, source_order: Optional[torch.Tensor] = None,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Integrates from noise (t = 1) to data (t = 0); returns latents of `shape` (B, C, h, w)."""
    device = und.input_ids.device
    x = torch.randn(shape, generator=generator, device=device)
    uncond = without_text(und) if text_guidance != 1.0 else None
    times = sampling_times(steps, shift, device=device)
    for i in range(steps):
        t = times[i].expand(shape[0])
        v = _velocity(model, und, x, t, source, source_valid, source_order)
        if uncond is not None:
            v_uncond = _velocity(model, uncond, x, t, source, source_valid, source_order)
            v = v_uncond + text_guidance * (v - v_uncond)
        x = x + (times[i + 1] - times[i]) * v
    return x


def _velocity(model, und, x, t, source, source_valid, source_order) -> torch.Tensor:
    gen = gen_inputs(x, t, source, source_valid, source_order)
    out = model(und, gen)
    n_target = model.gen.tokens_per_slot(*x.shape[-2:])
    pred = out.velocity[:, -n_target:]
    return model.gen.unpatchify(pred, 1, *x.shape[-2:])[:, :, 0]
