"""Attention masks of the fused model (docs/design.md, BAGEL's generalized causal attention).

Every token carries a logical `order`: text tokens count up one by one, and all tokens of one
image split (ViT image, clean VAE image, noisy target) share one value. Query q may attend key k
of the same sample iff k is valid and order[k] <= order[q]. That one rule gives causal text,
bidirectional image splits that see every earlier split, and — because the noisy target split
has the largest order — no token outside it ever sees the noise.

`OrderMask` holds the rule as orders, never as an (L, L) tensor: the "flex" backends turn it into
a block-sparse `flex_attention` mask (fusion/flex.py); "per_sample" runs SDPA one packed sample at
a time (fusion/per_sample.py); "dense" builds the boolean reference mask for SDPA, once per mask,
which the tests compare against.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class OrderMask:
    """Query q sees key k iff (k_valid[k] and k_order[k] <= q_order[q] and both belong to one sample)
    or k == q + offset. `q_sample` / `k_sample` number the samples packed into one sequence
    (in any order along the row); without them the whole row is one sample."""

    q_order: torch.Tensor  # (B, Lq)
    k_order: torch.Tensor  # (B, Lk)
    k_valid: torch.Tensor  # (B, Lk)
    offset: int = 0  # key index of query 0 itself: the rows of a joint mask below its first
    backend: str = "dense"
    q_sample: Optional[torch.Tensor] = None  # (B, Lq)
    k_sample: Optional[torch.Tensor] = None  # (B, Lk)
    _built: Optional[object] = field(default=None, repr=False, compare=False)
    _views: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def square(cls, order: torch.Tensor, valid: torch.Tensor, backend: str = "dense",
               sample: Optional[torch.Tensor] = None) -> "OrderMask":
        return cls(order, order, valid, 0, backend, sample, sample)

    def rows(self, start: int) -> "OrderMask":
        """The mask of queries `start:` against the same keys (kept: every layer asks again)."""
        return self._view(("rows", start), q_order=self.q_order[:, start:], offset=self.offset + start,
                          q_sample=_tail(self.q_sample, start))

    def corner(self, start: int) -> "OrderMask":
        """Queries and keys both from `start:`: a square mask's lower-right block."""
        keys = dict(k_order=self.k_order[:, start:], k_valid=self.k_valid[:, start:],
                    k_sample=_tail(self.k_sample, start))
        return self._view(("corner", start), q_order=self.q_order[:, start:],
                          q_sample=_tail(self.q_sample, start), **keys)

    def _view(self, key, **changes) -> "OrderMask":
        if key not in self._views:
            self._views[key] = replace(self, _built=None, _views={}, **changes)
        return self._views[key]

    def dense(self) -> torch.Tensor:
        """(B, 1, Lq, Lk) boolean, True where attention is allowed: the reference form."""
        allowed = (self.k_order[:, None, :] <= self.q_order[:, :, None]) & self.k_valid[:, None, :]
        if self.q_sample is not None:
            allowed &= self.q_sample[:, :, None] == self.k_sample[:, None, :]
        q_idx = torch.arange(self.q_order.shape[1], device=allowed.device) + self.offset
        eye = q_idx[:, None] == torch.arange(self.k_order.shape[1], device=allowed.device)[None]
        return (allowed | eye).unsqueeze(1)

    def attend(self, q, k, v, scale=None, enable_gqa: bool = False) -> torch.Tensor:
        """(B, H, L, D) attention under this mask, built once and reused by every layer."""
        backend = BACKENDS[self.backend](q.device, self.q_sample is not None)
        if self._built is None:
            self._built = BUILDERS[backend](self)
        if backend == "dense":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self._built, scale=scale, enable_gqa=enable_gqa)
        if backend == "per_sample":
            from lightbagel.fusion.per_sample import attend_per_sample

            return attend_per_sample(q, k, v, self._built, scale, enable_gqa)
        from lightbagel.fusion.flex import flex_attend

        return flex_attend(q, k, v, self._built, backend == "flex_compiled", scale, enable_gqa)


# fusion.attention -> the backend that runs on a device, for a mask with packed samples or without.
# "auto": torch has no flex backward on CPU, and its eager form builds dense scores anyway, so
# compiled flex on CUDA; elsewhere SDPA per sample for packed rows and dense for padded ones.
BACKENDS = {
    "auto": lambda device, packed: "flex_compiled" if device.type == "cuda" else _sdpa(packed),
    "dense": lambda device, packed: "dense",
    "per_sample": lambda device, packed: _sdpa(packed),
    "flex": lambda device, packed: "flex",
    "flex_compiled": lambda device, packed: "flex_compiled",
}


def _sdpa(packed: bool) -> str:
    """A padded row is one sample: per-sample attention would be the dense mask with extra steps."""
    return "per_sample" if packed else "dense"


def _block_mask(mask: OrderMask):
    from lightbagel.fusion.flex import order_block_mask

    return order_block_mask(mask)


def _sample_groups(mask: OrderMask):
    from lightbagel.fusion.per_sample import sample_groups

    return sample_groups(mask)


# The kernel input each backend builds once per mask.
BUILDERS = {"dense": OrderMask.dense, "per_sample": _sample_groups, "flex": _block_mask, "flex_compiled": _block_mask}


def _tail(x: Optional[torch.Tensor], start: int) -> Optional[torch.Tensor]:
    return None if x is None else x[:, start:]


def attend(q, k, v, mask) -> torch.Tensor:
    """(B, H, L, D) attention under an `OrderMask` or a dense boolean mask (or none)."""
    if isinstance(mask, OrderMask):
        return mask.attend(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def causal_order_mask(valid: torch.Tensor, backend: str = "dense") -> OrderMask:
    """Causal over positions is the same rule with each token's index as its order."""
    positions = torch.arange(valid.shape[1], device=valid.device).expand(valid.shape)
    return OrderMask.square(positions, valid, backend)
