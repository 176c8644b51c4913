"""The generalized causal rule as flex_attention's block-sparse mask equals the dense reference,
builds nothing of size (L, L), and gives the fused model the dense path's outputs."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lightbagel.fusion.flex import BLOCK, order_block_mask
from lightbagel.fusion.mask import OrderMask
from lightbagel.inputs import TARGET_ORDER, TEXT
from lightbagel.model import build_model
from tests.test_model import _edit_inputs, _perturb_fusion


def _layout(g: torch.Generator, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample: text runs (orders count up) and image splits (one order), a dropped span,
    the noisy target last, then right padding, each long enough to fill whole tiles at times."""
    order, valid, nxt = [], [], 0
    while len(order) < length * 3 // 4:
        run = int(torch.randint(1, 200, (1,), generator=g))
        image = bool(torch.rand(1, generator=g) < 0.5)
        order += [nxt] * run if image else list(range(nxt, nxt + run))
        keep = bool(torch.rand(1, generator=g) < 0.8)
        valid += [keep] * run
        nxt += 1 if image else run
    target = int(torch.randint(0, 200, (1,), generator=g))
    order, valid = order + [TARGET_ORDER] * target, valid + [True] * target
    pad = max(0, length - len(order))
    return torch.tensor(order + [0] * pad)[:length], torch.tensor(valid + [False] * pad)[:length]


def _random_masks(seed: int, batch: int = 3, length: int = 700, packed: bool = False) -> list[OrderMask]:
    """Square masks and their row / corner views; `packed`: several samples per row (ascending ids)."""
    g = torch.Generator().manual_seed(seed)
    order, valid = (torch.stack(x) for x in zip(*(_layout(g, length) for _ in range(batch))))
    sample = (torch.rand(batch, length, generator=g) < 1 / 250).long().cumsum(1) if packed else None
    square = OrderMask.square(order, valid, sample=sample)
    start = int(torch.randint(1, length - 1, (1,), generator=g))
    return [square, square.rows(start), square.corner(start), square.corner(start).rows(start // 3)]


def _what_flex_computes(mask: OrderMask) -> torch.Tensor:
    """Per (q, k): a full tile allows all, a partial tile asks the mask_mod, any other tile nothing."""
    bm = order_block_mask(mask)
    lq, lk = mask.q_order.shape[1], mask.k_order.shape[1]
    def tiles(num, idx):  # BlockMask keeps each query tile's chosen key tiles first in `idx`
        chosen = torch.arange(idx.shape[-1]) < num[..., None]
        dense = torch.zeros(idx.shape, dtype=torch.bool).scatter(-1, idx.long(), chosen)[:, 0]
        return dense.repeat_interleave(BLOCK, 1).repeat_interleave(BLOCK, 2)[:, :lq, :lk]
    q_idx, k_idx = torch.arange(lq)[:, None], torch.arange(lk)[None]
    rule = torch.stack([bm.mask_mod(b, 0, q_idx, k_idx) for b in range(mask.q_order.shape[0])])
    full = tiles(bm.full_kv_num_blocks, bm.full_kv_indices)
    return full | (tiles(bm.kv_num_blocks, bm.kv_indices) & rule)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_block_mask_equals_dense_rule_on_random_layouts(seed, packed):
    for mask in _random_masks(seed, packed=packed):
        assert torch.equal(_what_flex_computes(mask), mask.dense()[:, 0])


def _joint_row(seed: int, samples: int = 4) -> OrderMask:
    """A packed joint row as `PackedInputs.masks` builds it: every sample's prompt (text orders
    counting up), then every sample's image tokens (one order), so sample ids do not ascend along
    the row: a key tile can hold the end of one prompt and the start of the next."""
    g = torch.Generator().manual_seed(seed)
    prompts = [int(torch.randint(60, 300, (1,), generator=g)) for _ in range(samples)]
    images = [int(torch.randint(100, 300, (1,), generator=g)) for _ in range(samples)]
    order = torch.cat([torch.arange(n) for n in prompts] + [torch.full((n,), TARGET_ORDER) for n in images])
    sample = torch.cat([torch.full((n,), i) for part in (prompts, images) for i, n in enumerate(part)])
    return OrderMask.square(order[None], torch.ones(1, len(order), dtype=torch.bool), sample=sample[None])


@pytest.mark.parametrize("seed", range(3))
def test_block_mask_equals_dense_rule_on_a_packed_joint_row(seed):
    """A full tile must hold one sample on the key side too: else one sample's target sees the next
    prompt wherever compiled flex (CUDA) skips the mask_mod on full tiles."""
    square = _joint_row(seed)
    start = int(square.k_order.shape[1] // 2)
    for mask in (square, square.rows(start), square.corner(start // 2)):
        assert torch.equal(_what_flex_computes(mask), mask.dense()[:, 0])


@pytest.mark.parametrize("packed", [False, True])
def test_random_layouts_have_full_partial_and_empty_tiles(packed):
    """Guards the test above: a rule without full or empty tiles would not test the tile classes."""
    mask = _random_masks(0, packed=packed)[0]
    bm = order_block_mask(mask)
    full, partial = bm.full_kv_num_blocks.sum(), bm.kv_num_blocks.sum()
    assert full > 0 and partial > 0 and full + partial < bm.kv_indices.numel()


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_length_squared_tensor_at_16k_tokens():
    length = 16384
    order = torch.cat([torch.arange(length // 2), torch.full((length // 2,), TARGET_ORDER)])[None]
    mask = OrderMask.square(order, torch.ones(1, length, dtype=torch.bool), "flex")
    with _LargestTensor() as probe:
        for view in (mask, mask.rows(100), mask.corner(100)):
            order_block_mask(view)
    # Orders padded to whole tiles and (L / 128)^2 tile tables; an (L, L) mask would be 2.7e8.
    assert 0 < probe.largest <= 2 * length


@pytest.mark.parametrize("writeback", [True, False])
@torch.no_grad()
def test_model_outputs_equal_dense_path(tiny_recipe, make_batch, writeback):
    """A mixed T2I + edit batch, with one source dropped as condition dropout does."""
    recipe = replace(tiny_recipe.config, fusion=replace(tiny_recipe.config.fusion, und_writeback=writeback))
    model = build_model(recipe).eval()
    _perturb_fusion(model)
    batch = make_batch(model)
    gen = _edit_inputs(model, batch, 0)
    gen.valid[0, 0] = False
    outs = {}
    for backend in ("dense", "flex"):
        model.attention = backend
        out, cache = model.forward_with_cache(batch.und, gen)
        outs[backend] = (out.velocity, out.und_hidden, model.forward_generation(gen, cache))
    for flex, dense in zip(outs["flex"], outs["dense"]):
        torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["dense", "flex"])
@torch.no_grad()
def test_dropped_understanding_tokens_reach_no_layer(tiny_model, make_batch, backend):
    """Condition dropout hides tokens from every VLM, DiT and fusion layer under either backend:
    changing what the hidden tokens are changes nothing else."""
    _perturb_fusion(tiny_model)
    tiny_model.attention = backend
    batch = make_batch(tiny_model)
    gen = _edit_inputs(tiny_model, batch, 0)
    hidden = torch.zeros_like(batch.und.input_ids, dtype=torch.bool)
    for row, segment in zip(hidden, batch.und.segment):
        row[(segment == TEXT).nonzero().flatten()[1:3]] = True  # two words of each prompt
    und = replace(batch.und, keep=~hidden)
    words = tiny_model.und.processor.tokenizer.convert_tokens_to_ids(["red", "blue"])
    other = replace(und, input_ids=torch.where(hidden & (und.input_ids != words[0]), words[0], und.input_ids))
    other.input_ids[hidden & (und.input_ids == words[0])] = words[1]
    a, b = tiny_model(und, gen), tiny_model(other, gen)
    seen = und.valid
    torch.testing.assert_close(a.und_hidden[seen], b.und_hidden[seen], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.velocity, b.velocity, rtol=1e-5, atol=1e-5)
