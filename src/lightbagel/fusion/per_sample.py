"""The generalized causal rule over packed rows, one sample at a time: the CPU backend of packing.

A packed row (src/lightbagel/packing.py) holds many samples that never see each other. One dense
(L, L) mask over the row costs L^2 memory and time, and torch has no `flex_attention` backward on
CPU (docs/attention.md), so this backend gathers each sample's queries and keys, runs SDPA under
that sample's small dense mask (none when the sample sees all its keys, `is_causal` when its mask
is plain causal), and puts the outputs back in row order. A sample's tokens lie in a few contiguous
runs of the row (its prompt, its image slots), so gathering is `split` and `cat`, and so is
putting back: cheap to differentiate. The runs and small masks are built once per `OrderMask` and reused
by every layer.

Every query also sees its own key (k == q + offset, fusion/mask.py): in every mask the model builds
(a square mask, its `rows` and `corner` views) that key is the same token, so in the same sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import torch
import torch.nn.functional as F

Kind = Union[None, str, torch.Tensor]  # None: every key allowed; "causal"; else a (1, 1, nq, nk) bool mask
Runs = list[tuple[int, int]]  # [start, stop) ranges of flat indices, ascending


@dataclass
class SampleGroups:
    """The row's queries (and keys) cut into contiguous runs that tile (B * Lq) (and (B * Lk));
    per (row, sample) group, the runs that are its queries and keys, and its mask. `split` and
    `cat` are all autograd has to undo: no full-size zero gradient per gathered piece."""

    q_sizes: list[int]
    k_sizes: list[int]
    queries: list[list[int]]  # per group: indices into q_sizes, ascending
    keys: list[list[int]]
    kinds: list[Kind]
    # Groups of one shape and one mask, run as one batched SDPA call: (group indices, their kind).
    calls: list[tuple[list[int], Kind]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.calls:
            self.calls = _calls(self)


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
            queries.append(_runs(qi + b * q_len))
            keys.append(_runs(ki + b * k_len))
            kinds.append(_kind(allowed))
    (q_sizes, q_at), (k_sizes, k_at) = _tiling(queries, batch * q_len), _tiling(keys, batch * k_len)
    return SampleGroups(q_sizes, k_sizes, [[q_at[a] for a, _ in r] for r in queries],
                        [[k_at[a] for a, _ in r] for r in keys], kinds)


def _calls(groups: SampleGroups) -> list[tuple[list[int], Kind]]:
    """Groups with equal query and key lengths and equal masks, in first-seen order: a packed row
    holds many samples of one shape (T2I targets of one size, edits of one size), and one batched
    SDPA call costs far less than one call each."""
    calls: dict = {}
    for i, (q_at, k_at, kind) in enumerate(zip(groups.queries, groups.keys, groups.kinds)):
        nq, nk = (sum(sizes[j] for j in at) for sizes, at in ((groups.q_sizes, q_at), (groups.k_sizes, k_at)))
        key = (nq, nk, _mask_key(kind) if isinstance(kind, torch.Tensor) else kind)
        calls.setdefault(key, ([], kind))[0].append(i)
    return list(calls.values())


def _mask_key(mask: torch.Tensor):
    """Equal masks share a key; a mask without data (meta device) only its own."""
    return id(mask) if mask.device.type == "meta" else mask.cpu().numpy().tobytes()


def _runs(index: torch.Tensor) -> Runs:
    """Ascending indices -> their maximal contiguous ranges."""
    if len(index) == 0:
        return []
    breaks = ((index[1:] - index[:-1]) != 1).nonzero()[:, 0] + 1
    starts, stops = [0, *breaks.tolist()], [*breaks.tolist(), len(index)]
    return [(int(index[a]), int(index[b - 1]) + 1) for a, b in zip(starts, stops)]


def _tiling(groups: list[Runs], length: int) -> tuple[list[int], dict[int, int]]:
    """Sizes of runs tiling [0, length) (the groups' runs, gaps between them as runs of their own)
    and the piece index of each group run by its start."""
    sizes, at, pos = [], {}, 0
    for a, b in sorted(run for runs in groups for run in runs):
        if a > pos:
            sizes.append(a - pos)
        at[a] = len(sizes)
        sizes.append(b - a)
        pos = b
    return (sizes + [length - pos] if length > pos else sizes), at


def _kind(allowed: torch.Tensor) -> Kind:
    """The cheapest SDPA form of one sample's (nq, nk) boolean mask."""
    if bool(allowed.all()):
        return None
    if allowed.shape[0] == allowed.shape[1] and torch.equal(allowed, torch.ones_like(allowed).tril()):
        return "causal"
    return allowed[None, None]


def _joined(pieces: tuple, index: list[int]) -> torch.Tensor:
    """(1, H, n, D): the pieces of one group, in order."""
    return (pieces[index[0]] if len(index) == 1 else torch.cat([pieces[i] for i in index], dim=1))[None]


def _stacked(pieces: tuple, indices: list[list[int]]) -> torch.Tensor:
    """(G, H, n, D): groups of one length, each joined from its pieces."""
    if len(indices) == 1:
        return _joined(pieces, indices[0])
    return torch.cat([_joined(pieces, index) for index in indices])


def attend_per_sample(q, k, v, groups: SampleGroups, scale: Optional[float] = None,
                      enable_gqa: bool = False) -> torch.Tensor:
    """(B, H, L, D) attention, sample by sample; equals SDPA under the whole row's dense mask."""
    batch, heads, q_len, _ = q.shape
    if not groups.queries:  # no query at all (every und token of a packed batch dropped)
        return q.new_zeros(batch, heads, q_len, v.shape[-1])
    flat = lambda x: x.transpose(0, 1).flatten(1, 2)  # (B, H, L, D) -> (H, B * L, D)  # noqa: E731
    qs = flat(q).split(groups.q_sizes, dim=1)
    ks, vs = flat(k).split(groups.k_sizes, dim=1), flat(v).split(groups.k_sizes, dim=1)
    outs = [None] * len(qs)
    for members, kind in groups.calls:
        q_at, k_at = [groups.queries[g] for g in members], [groups.keys[g] for g in members]
        mask = kind if isinstance(kind, torch.Tensor) else None
        out = F.scaled_dot_product_attention(_stacked(qs, q_at), _stacked(ks, k_at), _stacked(vs, k_at),
                                             attn_mask=mask, is_causal=isinstance(kind, str), scale=scale,
                                             enable_gqa=enable_gqa)
        for at, one in zip(q_at, out):
            for i, piece in zip(at, one.split([groups.q_sizes[i] for i in at], dim=1)):
                outs[i] = piece
    out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]  # every query belongs to one group
    return out.unflatten(1, (batch, q_len)).transpose(0, 1)
