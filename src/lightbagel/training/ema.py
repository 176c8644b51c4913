"""Exponential moving average of the trainable weights, sharded like them under FSDP2.

The averages are buffers of a module on the LightningModule, so they are saved in (sharded)
checkpoints with the model and resume on any number of ranks.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _key(name: str) -> str:
    return name.replace(".", "__")  # buffer names cannot hold dots


class EMAWeights(nn.Module):
    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"trainer.ema.decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        for name, p in model.named_parameters():
            if p.requires_grad:
                self.register_buffer(_key(name), p.detach().float().clone())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        averages = [_local(getattr(self, _key(n))) for n in self.names]
        current = [_local(params[n].detach()).float() for n in self.names]
        torch._foreach_lerp_(averages, current, 1.0 - self.decay)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(parameter name, average) pairs."""
        for name in self.names:
            yield name, getattr(self, _key(name))

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrites the model's trainable weights with their averages (export)."""
        params = dict(model.named_parameters())
        for name, average in self.items():
            params[name].copy_(average.to(params[name].dtype))
