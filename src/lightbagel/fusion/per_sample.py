"""The generalized causal rule over packed rows, one sample at a time: the CPU backend of packing.

A packed row (src/lightbagel/packing.py) holds many samples that never see each other. One dense
(L, L) mask over the row costs L^2 memory and time, and torch has no `flex_attention` backward on
CPU (docs/attention.md), so this backend gathers each sample's queries and keys, runs SDPA under
that sample's small dense mask (none when the sample sees all its keys, `is_causal` when its mask
is plain causal), and puts the outputs back in place with one gather. The index tensors and small
masks are built once per `OrderMask` and reused by every layer.

Every query also sees its own key (k == q + offset, fusion/mask.py): in every mask the model builds
(a square mask, its `rows` and `corner` views) that key is the same token, so in the same sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F

Kind = Union[None, str, torch.Tensor]  # None: every key allowed; "causal"; else a (1, 1, nq, nk) bool mask


@dataclass
class SampleGroups:
    """Per (row, sample): flat indices into (B * Lq) queries and (B * Lk) keys, and its mask."""

    queries: list[torch.Tensor]
    keys: list[torch.Tensor]
    kinds: list[Kind]
    inverse: torch.Tensor  # (B * Lq,) where each query's output sits in the concatenated groups


def sample_groups(mask) -> SampleGroups:
    """The groups of an `OrderMask` with `q_sample` / `k_sample` (fusion/mask.py)."""
    batch, q_len = mask.q_order.shape
    k_len = mask.k_order.shape[1]
    queries, keys, kinds = [], [], []
    for b in range(batch):
        for s in torch.unique(mask.q_sample[b]).tolist():
            qi = (mask.q_sample[b] == s).nonzero()[:, 0]
            ki = (mask.k_sample[b] == s).nonzero()[:, 0]
            allowed = (mask.k_order[b, ki][None] <= mask.q_order[b, qi][:, None]) & mask.k_valid[b, ki][None]
            allowed |= (qi[:, None] + mask.offset) == ki[None]
            queries.append(qi + b * q_len)
            keys.append(ki + b * k_len)
            kinds.append(_kind(allowed))
    order = torch.cat(queries) if queries else torch.zeros(0, dtype=torch.long, device=mask.q_order.device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return SampleGroups(queries, keys, kinds, inverse)


def _kind(allowed: torch.Tensor) -> Kind:
    """The cheapest SDPA form of one sample's (nq, nk) boolean mask."""
    if bool(allowed.all()):
        return None
    if allowed.shape[0] == allowed.shape[1] and torch.equal(allowed, torch.ones_like(allowed).tril()):
        return "causal"
    return allowed[None, None]


def attend_per_sample(q, k, v, groups: SampleGroups, scale: Optional[float] = None,
                      enable_gqa: bool = False) -> torch.Tensor:
    """(B, H, L, D) attention, sample by sample; equals SDPA under the whole row's dense mask."""
    batch, heads, q_len, _ = q.shape
    if not groups.queries:  # no query at all (every und token of a packed batch dropped)
        return q.new_zeros(batch, heads, q_len, v.shape[-1])
    flat = lambda x: x.transpose(0, 1).flatten(1, 2)  # (B, H, L, D) -> (H, B * L, D)  # noqa: E731
    qf, kf, vf = flat(q), flat(k), flat(v)
    outs = []
    for qi, ki, kind in zip(groups.queries, groups.keys, groups.kinds):
        mask = kind if isinstance(kind, torch.Tensor) else None
        outs.append(F.scaled_dot_product_attention(
            qf[:, qi][None], kf[:, ki][None], vf[:, ki][None], attn_mask=mask, is_causal=isinstance(kind, str),
            scale=scale, enable_gqa=enable_gqa)[0])
    out = torch.cat(outs, dim=1)[:, groups.inverse]  # (H, B * Lq, Dv) back in row order
    return out.unflatten(1, (batch, q_len)).transpose(0, 1)
