"""Activation memory measured, not guessed: one meta-device training forward per sample kind,
counting the bytes of every tensor autograd saves for the backward pass.

Attention is swapped for a stand-in that saves what FlashAttention / cuDNN kernels save (q, k,
v, the output and a float32 log-sum-exp per query), never an L x L score matrix, so the count
is linear in tokens and sums over the samples of a packed sequence. Parameters (and views of
them) are not activations and are not counted; tensors saved twice are counted once.

With activation checkpointing per depth unit (VLM blocks, DiT block i, fusion block i), what
stays is each unit's input (the und and gen hidden states) plus, during the backward of one
unit, that unit's saved tensors, next to what the units share and is never recomputed (the embeddings,
per-token timestep modulation, rotary tables): `shared + units x boundary + max unit`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lightbagel.model import LightBagel
from lightbagel.planning.workload import SampleShape, sample_inputs


@dataclass(frozen=True)
class ActivationBytes:
    """Saved-for-backward bytes of one sample."""

    total: int  # without activation checkpointing
    shared: int  # saved before the first depth unit (embeddings, timestep modulation)
    max_unit: int  # the largest depth unit's share
    boundary: int  # one unit's input: und + gen hidden states
    units: int

    @property
    def checkpointed(self) -> int:
        return self.shared + self.units * self.boundary + self.max_unit


class _FlashLikeAttention(torch.autograd.Function):
    """Shapes and saved tensors of a fused attention kernel; no values (meta device only)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _flash_like_sdpa(query, key, value, *args, **kwargs):
    return _FlashLikeAttention.apply(query, key, value)


@contextmanager
def flash_like_attention():
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _flash_like_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def measure_sample(model: LightBagel, shape: SampleShape, image_size: int,
                   dtype: torch.dtype = torch.bfloat16) -> ActivationBytes:
    """Saved bytes of one training forward of `shape` on a meta-device `model`."""
    und, gen = sample_inputs(model, shape, image_size, dtype=dtype)
    params = {_storage_key(p) for p in model.parameters()}
    saved: dict[int, tuple[int, int]] = {}  # storage -> (bytes, depth unit)
    unit = [-1]  # -1: before the first VLM block, the shared embeddings

    def pack(t: torch.Tensor):
        key = _storage_key(t)
        if key not in params and key not in saved:
            saved[key] = (t.untyped_storage().nbytes(), unit[0])
        return t

    def advance(*_):
        unit[0] += 1

    shared_inputs: dict[int, int] = {}

    def gen_block(index, hidden, mask, rope, cond, _block=model.gen.block):
        # Timestep modulation and rotary tables enter every unit: kept whole under checkpointing.
        for t in _tensors(rope, cond):
            shared_inputs.setdefault(_storage_key(t), t.untyped_storage().nbytes())
        return _block(index, hidden, mask, rope, cond)

    model.gen.block = gen_block
    hooks = [blk.register_forward_hook(advance) for blk in model.fusion]
    hooks.append(model.und._lm.layers[0].register_forward_pre_hook(lambda *_: unit.__setitem__(0, max(unit[0], 0))))
    try:
        with flash_like_attention(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.train()
            model(und, gen)
    finally:
        del model.gen.block  # back to the class's method
        for h in hooks:
            h.remove()
    per_unit = [0] * (len(model.fusion) + 2)  # shared, the units, the head after the last one
    for nbytes, u in saved.values():
        per_unit[u + 1] += nbytes
    item = torch.empty((), dtype=dtype).element_size()
    boundary = (shape.und * model.und.hidden_size + shape.gen * model.gen.hidden_size) * item
    inputs = sum(n for key, n in shared_inputs.items() if key not in saved)
    return ActivationBytes(sum(per_unit) + inputs, per_unit[0] + inputs, max(per_unit[1:]), boundary,
                           len(model.fusion))


def _tensors(*values) -> list[torch.Tensor]:
    flat = []
    for v in values:
        if isinstance(v, torch.Tensor):
            flat.append(v)
        elif isinstance(v, (tuple, list)):
            flat += _tensors(*v)
    return flat
