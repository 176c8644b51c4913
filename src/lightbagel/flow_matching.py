"""Flow matching as BAGEL and Wan use it (docs/design.md).

t = sigmoid(n), n ~ N(mean, std); shifted t' = s t / (1 + (s - 1) t); x_t = (1 - t') x0 + t' eps;
the model predicts v = eps - x0, or (`objective.prediction: sample`) x0 itself, read as the
velocity it implies.
"""

from __future__ import annotations

from typing import Optional

import torch


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Spends more of the schedule at high noise when shift > 1 (needed for large images)."""
    return shift * t / (1 + (shift - 1) * t)


def sample_time(n: int, shift: float, mean: float = 0.0, std: float = 1.0,
                device=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    normal = torch.randn(n, device=device, generator=generator) * std + mean
    return shift_time(torch.sigmoid(normal), shift)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - t) * x0 + t * noise


def velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def sampling_times(steps: int, shift: float, device=None) -> torch.Tensor:
    """steps + 1 times from 1 (noise) to 0 (data) for the Euler ODE solver."""
    return shift_time(torch.linspace(1.0, 0.0, steps + 1, device=device), shift)


# Below this t a predicted x0 is read with 1 / SAMPLE_MIN_T: JiT (arXiv:2511.13720, section 3) clips
# the same division, which would otherwise blow up at the data end of the schedule.
SAMPLE_MIN_T = 0.05


def velocity_from_sample(x0: torch.Tensor, noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v = (x_t - x0) / t, the velocity of a predicted clean sample: the network never has to carry
    the noise from its input to its output, which a narrow network does badly (JiT, arXiv:2511.13720;
    measured on the tiny DiT in docs/tiny.md). `t` broadcasts against x0."""
    return (noisy - x0) / t.clamp_min(SAMPLE_MIN_T)


# `objective.prediction` -> (network output, noisy input, t) -> velocity.
PREDICTIONS = {"velocity": lambda out, noisy, t: out, "sample": velocity_from_sample}
