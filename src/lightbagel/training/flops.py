"""A FLOP estimate per batch for MFU: 2 FLOPs per weight per token forward, from parameter counts.

Backward costs twice the forward for trainable weights (activation and weight gradients) and
once for frozen weights that gradients still flow through (the VLM blocks feed later fusion
blocks). Embedding lookups, the ViT and the quadratic attention terms are left out, so MFU is
slightly understated at long sequence lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass
class StreamWeights:
    """Matmul weights each token of a stream passes through, split by trainability."""

    und_trainable: int = 0
    und_frozen: int = 0
    gen_trainable: int = 0
    gen_frozen: int = 0


def _count(modules, weights: StreamWeights, stream: str) -> None:
    for module in modules:
        for p in module.parameters():
            if p.dim() < 2:  # norms and biases: negligible FLOPs
                continue
            kind = "trainable" if p.requires_grad else "frozen"
            name = f"{stream}_{kind}"
            setattr(weights, name, getattr(weights, name) + p.numel())


def stream_weights(model: nn.Module, und_blocks, gen_blocks) -> StreamWeights:
    weights = StreamWeights()
    _count(und_blocks, weights, "und")
    _count(gen_blocks, weights, "gen")
    for block in model.fusion:
        _count([getattr(block, "und", nn.Identity())], weights, "und")
        _count([getattr(block, "gen", block)], weights, "gen")
    return weights


def train_flops(w: StreamWeights, und_tokens: int, gen_tokens: int) -> int:
    """Forward + backward FLOPs of one training batch on this device."""
    und = 2 * und_tokens * (3 * w.und_trainable + 2 * w.und_frozen)
    gen = 2 * gen_tokens * (3 * w.gen_trainable + 2 * w.gen_frozen)
    return int(und + gen)
