"""The generalized causal rule for torch `flex_attention`: a `mask_mod` plus a `BlockMask` built
from per-block order summaries, so no (L, L) tensor exists at any sequence length.

https://pytorch.org/blog/flexattention/ describes the block-sparse format: for each query tile,
the key tiles that are partly allowed (the `mask_mod` runs there) and those wholly allowed
(no `mask_mod` at all). Our rule depends on orders only, so a tile's class follows from the
smallest and largest order of its queries and of its valid keys.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

BLOCK = 128  # flex_attention's default tile; every tile decision below is made at this size
_LOW, _HIGH = -(1 << 40), 1 << 40  # sentinels outside every order (TARGET_ORDER is 1 << 30)


def order_block_mask(mask) -> BlockMask:
    """The `OrderMask`'s rule (fusion/mask.py) as a BlockMask; its tile tables are (B, L/128, L/128)."""
    q_len, k_len = mask.q_order.shape[1], mask.k_order.shape[1]
    q_min, q_max = _tile_range(mask.q_order, None)
    k_min, k_max = _tile_range(mask.k_order, mask.k_valid)
    all_valid = _tiles(_pad(mask.k_valid, False)).all(-1)
    full = all_valid[:, None, :] & (k_max[:, None, :] <= q_min[:, :, None])
    some = k_min[:, None, :] <= q_max[:, :, None]
    if mask.q_sample is not None:
        # A joint packed row is [every prompt; every image], so samples do not ascend along it: a
        # full tile must hold one sample on both sides; overlapping ranges may share one (partial).
        (qs_min, qs_max), (ks_min, ks_max) = _tile_range(mask.q_sample, None), _tile_range(mask.k_sample, None)
        one_q, one_k = (qs_min == qs_max)[:, :, None], (ks_min == ks_max)[:, None, :]
        full &= one_q & one_k & (qs_min[:, :, None] == ks_min[:, None, :])
        some &= (ks_min[:, None, :] <= qs_max[:, :, None]) & (ks_max[:, None, :] >= qs_min[:, :, None])
    partial = (some | _diagonal(q_len, k_len, mask.offset, mask.q_order.device)) & ~full
    return BlockMask.from_kv_blocks(*_ordered(partial), *_ordered(full), BLOCK_SIZE=BLOCK,
                                    mask_mod=_mask_mod(mask), seq_lengths=(q_len, k_len))


def _mask_mod(mask):
    q_order, k_order, k_valid = _pad(mask.q_order, 0), _pad(mask.k_order, 0), _pad(mask.k_valid, False)
    offset = mask.offset
    if mask.q_sample is None:
        def rule(b, h, q_idx, kv_idx):
            sees = (k_order[b, kv_idx] <= q_order[b, q_idx]) & k_valid[b, kv_idx]
            return sees | (q_idx + offset == kv_idx)
        return rule
    q_sample, k_sample = _pad(mask.q_sample, -1), _pad(mask.k_sample, -2)
    def packed_rule(b, h, q_idx, kv_idx):
        sees = (k_order[b, kv_idx] <= q_order[b, q_idx]) & k_valid[b, kv_idx]
        return (sees & (q_sample[b, q_idx] == k_sample[b, kv_idx])) | (q_idx + offset == kv_idx)
    return packed_rule


def _tile_range(values: torch.Tensor, valid) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) -> per-tile smallest and largest value over the real (and valid) entries."""
    real = _tiles(_pad(torch.ones_like(values, dtype=torch.bool), False))
    if valid is not None:
        real = real & _tiles(_pad(valid, False))
    v = _tiles(_pad(values, 0))
    return torch.where(real, v, _HIGH).amin(-1), torch.where(real, v, _LOW).amax(-1)


def _tiles(x: torch.Tensor) -> torch.Tensor:
    return x.unflatten(1, (-1, BLOCK))


def _pad(x: torch.Tensor, fill) -> torch.Tensor:
    """Right-pads dim 1 to a whole number of tiles, so the rule never indexes past the end."""
    extra = -x.shape[1] % BLOCK
    return torch.cat([x, x.new_full((x.shape[0], extra), fill)], 1) if extra else x


def _diagonal(q_len: int, k_len: int, offset: int, device) -> torch.Tensor:
    """(1, Mq, Mk): tiles holding some self pair (q, q + offset); every query sees itself."""
    q_tiles, k_tiles = -(-q_len // BLOCK), -(-k_len // BLOCK)
    first = torch.arange(q_tiles, device=device) * BLOCK + offset
    last = torch.clamp(first + BLOCK, max=q_len + offset) - 1
    k_first = torch.arange(k_tiles, device=device) * BLOCK
    return ((first[:, None] < k_first[None] + BLOCK) & (last[:, None] >= k_first[None])).unsqueeze(0)


def _ordered(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Mq, Mk) bool -> BlockMask's (B, 1, Mq) counts and (B, 1, Mq, Mk) indices, chosen first."""
    counts = tiles.sum(-1, dtype=torch.int32)
    indices = torch.argsort(tiles.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return counts.unsqueeze(1), indices.unsqueeze(1)


def flex_attend(q, k, v, block_mask: BlockMask, compiled: bool, scale=None, enable_gqa: bool = False):
    """(B, H, L, D) attention under `block_mask`. Eager flex runs torch's reference maths, which
    builds dense scores (fine for tests); `compiled` runs the fused kernel that never does."""
    if compiled:
        return _compiled_flex(q.is_cuda)(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa)
    with warnings.catch_warnings():  # torch warns that eager flex is unfused: chosen knowingly
        warnings.filterwarnings("ignore", "flex_attention called without torch.compile")
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa)


@lru_cache(maxsize=2)
def _compiled_flex(dynamic: bool):
    """Packed rows change length every batch: a static kernel would recompile per batch until torch's
    recompile limit, then fall back to eager flex and its dense scores. So CUDA compiles one
    shape-generic kernel. CPU stays static: its inductor fails to build the dynamic flex template
    (torch 2.13, measured), and CPU runs compiled flex forward-only, for benchmarks."""
    return torch.compile(flex_attention, dynamic=dynamic)
