"""Per-sample randomness keyed by (seed, micro-step, global sample index).

Noise, flow times and condition dropout of a sample depend only on its key, not on the rank
that holds it or on what ran before: 2 ranks with half batches draw exactly what 1 rank with
the whole batch draws, and a resumed run draws what an uninterrupted one would have.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Draws:
    uniform: torch.Tensor  # (B, 3): text, ViT and VAE-source dropout
    normal: torch.Tensor  # (B,): logit of the flow time
    noise: torch.Tensor  # (B, *shape): the flow-matching noise


def sample_seeds(seed: int, micro_step: int, first_index: int, n: int) -> list[int]:
    return [int(np.random.SeedSequence([seed, micro_step, first_index + i]).generate_state(1)[0]) for i in range(n)]


def draw(seeds: list[int], noise_shape: tuple[int, ...], device, dtype: torch.dtype) -> Draws:
    uniform, normal, noise = [], [], []
    for s in seeds:
        g = torch.Generator().manual_seed(s)
        uniform.append(torch.rand(3, generator=g))
        normal.append(torch.randn(1, generator=g))
        noise.append(torch.randn(noise_shape, generator=g))
    return Draws(torch.stack(uniform).to(device), torch.cat(normal).to(device),
                 torch.stack(noise).to(device=device, dtype=dtype))
