"""Fusion blocks: zero-initialised multimodal self-attention between the two towers.

Each stream has its own pre-norm and Q/K/V/O projections at its own width, meeting in one joint
attention of `num_heads x head_dim`; there is no FFN (docs/design.md: ~3B new parameters at full
size). The output projections start at zero, so at step 0 the fused model computes exactly the
two original models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from lightbagel.fusion.mask import attend
from lightbagel.recipe.schema import FusionConfig

Rotate = Callable[[torch.Tensor, object], torch.Tensor]
# fusion.positional -> whether each stream rotates its own Q/K with its own rotary embedding.
PER_STREAM_ROTARY = {"per_stream": True, "none": False}


@dataclass
class StreamSpec:
    """What a fusion block needs to know about one tower."""

    hidden_size: int
    rotate: Optional[Rotate]  # applies the tower's own rotary embedding to (B, L, H, D) tensors


class StreamAttention(nn.Module):
    """One stream's side of the joint attention: norm, Q/K/V in, O out (zero-initialised)."""

    def __init__(self, dim: int, heads: int, head_dim: int, with_query: bool, qk_norm: bool = True,
                 zero_init: bool = True, eps: float = 1e-6):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.norm = nn.RMSNorm(dim, eps=eps)
        self.to_q = nn.Linear(dim, inner) if with_query else None
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.Linear(inner, dim) if with_query else None
        self.norm_q = nn.RMSNorm(head_dim, eps=eps) if qk_norm and with_query else None
        self.norm_k = nn.RMSNorm(head_dim, eps=eps) if qk_norm else None
        if self.to_out is not None and zero_init:
            nn.init.zeros_(self.to_out.weight)
            nn.init.zeros_(self.to_out.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim))

    def keys_values(self, x: torch.Tensor, rotate: Optional[Rotate], rope) -> tuple:
        k, v = self._heads(self.to_k(x)), self._heads(self.to_v(x))
        if self.norm_k is not None:
            k = self.norm_k(k)
        if rotate is not None:
            k = rotate(k, rope)
        return k, v

    def queries(self, x: torch.Tensor, rotate: Optional[Rotate], rope) -> torch.Tensor:
        q = self._heads(self.to_q(x))
        if self.norm_q is not None:
            q = self.norm_q(q)
        return rotate(q, rope) if rotate is not None else q


class DoubleFusionBlock(nn.Module):
    """Joint attention over [und tokens; gen tokens] under the generalized causal mask."""

    def __init__(self, und: StreamSpec, gen: StreamSpec, heads: int, head_dim: int, und_writeback: bool = True,
                 per_stream_rope: bool = True, qk_norm: bool = True, zero_init: bool = True, eps: float = 1e-6):
        super().__init__()
        self.und_writeback, self.per_stream_rope = und_writeback, per_stream_rope
        norms = dict(qk_norm=qk_norm, zero_init=zero_init, eps=eps)
        self.und_rotate, self.gen_rotate = und.rotate, gen.rotate
        self.und = StreamAttention(und.hidden_size, heads, head_dim, with_query=und_writeback, **norms)
        self.gen = StreamAttention(gen.hidden_size, heads, head_dim, with_query=True, **norms)

    def und_keys_values(self, h_und: torch.Tensor, rope_und) -> tuple:
        """The understanding side's K/V: noise-free, so inference computes it once per prompt."""
        rotate = self.und_rotate if self.per_stream_rope else None
        return self.und.keys_values(self.und.norm(h_und), rotate, rope_und)

    def forward(self, h_und, h_gen, mask, rope_und, rope_gen, und_kv=None):
        und_rot = self.und_rotate if self.per_stream_rope else None
        gen_rot = self.gen_rotate if self.per_stream_rope else None
        x_und, x_gen = self.und.norm(h_und), self.gen.norm(h_gen)
        k_u, v_u = und_kv if und_kv is not None else self.und.keys_values(x_und, und_rot, rope_und)
        k_g, v_g = self.gen.keys_values(x_gen, gen_rot, rope_gen)
        q_g = self.gen.queries(x_gen, gen_rot, rope_gen)
        n_und = k_u.shape[1]
        if self.und_writeback:
            q = torch.cat([self.und.queries(x_und, und_rot, rope_und), q_g], dim=1)
        else:
            q, mask = q_g, mask.rows(n_und)
        out = _attend(q, torch.cat([k_u, k_g], 1), torch.cat([v_u, v_g], 1), mask)
        h_gen = h_gen + self.gen.to_out(out[:, -h_gen.shape[1]:])
        if self.und_writeback:
            h_und = h_und + self.und.to_out(out[:, :n_und])
        return h_und, h_gen

    def attend_generation(self, h_gen, mask_rows, rope_gen, und_kv) -> torch.Tensor:
        """The generation side alone against cached understanding K/V: one sampling step.

        `mask_rows` are the gen rows of the joint mask (Lg queries, Lu + Lg keys). Gen queries never
        feed the und side, so this equals the gen output of `forward` given the same `und_kv`.
        """
        gen_rot = self.gen_rotate if self.per_stream_rope else None
        x_gen = self.gen.norm(h_gen)
        k_g, v_g = self.gen.keys_values(x_gen, gen_rot, rope_gen)
        q_g = self.gen.queries(x_gen, gen_rot, rope_gen)
        k_u, v_u = und_kv
        out = _attend(q_g, torch.cat([k_u, k_g], 1), torch.cat([v_u, v_g], 1), mask_rows)
        return h_gen + self.gen.to_out(out)


def _attend(q, k, v, mask) -> torch.Tensor:
    """(B, L, H, D) tensors -> (B, Lq, H*D)."""
    return attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask).transpose(1, 2).flatten(2)


def build_double_fusion(cfg: FusionConfig, und: StreamSpec, gen: StreamSpec, heads: int, head_dim: int, depth: int):
    kwargs = dict(und_writeback=cfg.und_writeback, per_stream_rope=PER_STREAM_ROTARY[cfg.positional],
                  qk_norm=cfg.qk_norm, zero_init=cfg.zero_init, eps=cfg.eps)
    return nn.ModuleList(DoubleFusionBlock(und, gen, heads, head_dim, **kwargs) for _ in range(depth))
