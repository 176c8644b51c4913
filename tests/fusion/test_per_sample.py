"""The per-sample backend (fusion/per_sample.py) equals the dense rule on packed rows, forward and
backward, and never builds an (L, L) tensor."""

from __future__ import annotations

import pytest
import torch

from lightbagel.fusion.mask import OrderMask
from lightbagel.fusion.per_sample import sample_groups
from lightbagel.inputs import TARGET_ORDER
from tests.fusion.test_flex import _LargestTensor, _random_masks


def _shuffled(mask: OrderMask, seed: int) -> OrderMask:
    """The same square rule with tokens permuted: samples no longer ascend along the row, as in a
    packed joint row ([und of every sample; gen of every sample])."""
    perm = torch.randperm(mask.q_order.shape[1], generator=torch.Generator().manual_seed(seed))
    square = OrderMask.square(mask.q_order[:, perm], mask.k_valid[:, perm], sample=mask.q_sample[:, perm])
    start = mask.q_order.shape[1] // 3
    return [square, square.rows(start), square.corner(start)]


def _attention(mask: OrderMask, backend: str, q, k, v):
    view = OrderMask(mask.q_order, mask.k_order, mask.k_valid, mask.offset, backend, mask.q_sample, mask.k_sample)
    return view.attend(q, k, v, scale=0.3, enable_gqa=q.shape[1] != k.shape[1])


@pytest.mark.parametrize("seed", range(3))
def test_per_sample_equals_dense_rule_on_random_packed_layouts(seed):
    masks = _random_masks(seed, packed=True, length=400)
    for mask in masks + _shuffled(masks[0], seed):
        g = torch.Generator().manual_seed(seed)
        batch, lq, lk = mask.q_order.shape[0], mask.q_order.shape[1], mask.k_order.shape[1]
        if lq == 0:  # a view past the row's end: nothing to compare (nor to differentiate)
            continue
        inputs = [torch.randn(batch, h, n, 8, generator=g, requires_grad=True) for h, n in ((4, lq), (2, lk), (2, lk))]
        outs = {}
        for backend in ("per_sample", "dense"):
            out = _attention(mask, backend, *inputs)
            grads = torch.autograd.grad(out.pow(2).sum(), inputs)
            outs[backend] = (out, *grads)
        for mine, ref in zip(outs["per_sample"], outs["dense"]):
            torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)


def test_no_length_squared_tensor_at_16k_packed_tokens():
    """16 samples of 1024 tokens (text, a clean image, the noisy target) in one 16K row."""
    n, samples = 1024, 16
    one = torch.cat([torch.arange(256), torch.full((256,), 256), torch.full((512,), TARGET_ORDER)])
    order, sample = one.repeat(samples)[None], torch.arange(samples).repeat_interleave(n)[None]
    mask = OrderMask.square(order, torch.ones_like(order, dtype=torch.bool), "auto", sample)  # CPU: per sample
    q = torch.randn(1, 1, n * samples, 8)
    with _LargestTensor() as probe:
        mask.attend(q, q, q)
    # Per-sample scores are 1024^2; one (L, L) mask or score matrix would be 2.7e8.
    assert 0 < probe.largest <= n * n


def test_samples_of_one_shape_and_mask_share_one_sdpa_call():
    """Four T2I-like samples (6 prompt tokens, 4 target tokens), two edit-like (3 + a 2-token source
    + 2 target), one of the T2I length with another mask (a 2-token image split) and one longer:
    four calls, each sample's output where it belongs (the equality above, on repeated shapes)."""
    t2i = [*range(6), *[TARGET_ORDER] * 4]
    edit = [0, 1, 2, 3, 3, *[TARGET_ORDER] * 2]
    other = [*range(4), 4, 4, *[TARGET_ORDER] * 4]
    longer = [*range(9), *[TARGET_ORDER] * 4]
    layout = [t2i, edit, t2i, other, t2i, longer, edit, t2i]
    order = torch.tensor([o for one in layout for o in one])[None]
    sample = torch.cat([torch.full((len(one),), i) for i, one in enumerate(layout)])[None]
    mask = OrderMask.square(order, torch.ones_like(order, dtype=torch.bool), "per_sample", sample)
    groups = sample_groups(mask)
    assert [members for members, _ in groups.calls] == [[0, 2, 4, 7], [1, 6], [3], [5]]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, order.shape[1], 8, generator=g) for _ in range(3))
    torch.testing.assert_close(_attention(mask, "per_sample", q, k, v), _attention(mask, "dense", q, k, v),
                               rtol=1e-5, atol=1e-5)
