"""Flow matching as BAGEL and Wan use it (docs/design.md).

t = sigmoid(n), n ~ N(mean, std); shifted t' = s t / (1 + (s - 1) t); x_t = (1 - t') x0 + t' eps;
the model predicts v = eps - x0.
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
