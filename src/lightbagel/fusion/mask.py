"""Attention masks of the fused model (docs/design.md, BAGEL's generalized causal attention).

Every token carries a logical `order`: text tokens count up one by one, and all tokens of one
image split (ViT image, clean VAE image, noisy target) share one value. Query q may attend key k
of the same sample iff k is valid and order[k] <= order[q]. That one rule gives causal text,
bidirectional image splits that see every earlier split, and — because the noisy target split
has the largest order — no token outside it ever sees the noise.
"""

from __future__ import annotations

import torch


def generalized_causal_mask(order: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, L) orders and validity -> (B, 1, L, L) boolean mask, True where attention is allowed."""
    allowed = order[:, None, :] <= order[:, :, None]
    allowed = allowed & valid[:, None, :]
    return _attend_self(allowed).unsqueeze(1)


def causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """Plain causal mask over positions, hiding invalid keys: what a VLM block was trained with."""
    length = valid.shape[1]
    tril = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
    allowed = tril[None] & valid[:, None, :]
    return _attend_self(allowed).unsqueeze(1)


def _attend_self(allowed: torch.Tensor) -> torch.Tensor:
    # A padded or dropped query with no visible key would give NaN rows in softmax; letting every
    # token see itself keeps them finite, and nothing else ever reads those rows.
    eye = torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)
    return allowed | eye
