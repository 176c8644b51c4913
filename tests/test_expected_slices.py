"""One pinned output slice per model path (diffusers' `expected_slice` tests): a silent change to
the fusion maths, an adapter or the input layout moves these numbers.

Each path is the tiny recipe with one card swapped in, built from the recipe's seed, its fusion
weights set from a fixed generator (zero-init would hide the fusion), run on a fixed mixed
text-to-image + edit batch at t = 0.5. If a change is meant to move them, re-pin the values the
failure prints, and say why in the commit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightbagel.inputs import gen_inputs
from lightbagel.model import build_model
from lightbagel.recipe import load_recipe

TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml"

# swap -> (velocity[0].flatten()[:6], understanding hidden state [0, -1, :4]). The VLM side never
# attends to DiT tokens, so DiT swaps with the same fusion shapes share the hidden-state slice.
EXPECTED = {
    "": ([0.00726, 0.24454, 0.28979, 0.88441, 0.62141, 0.39975],
         [-2.22584, -0.11879, 0.87464, 1.211]),
    "understanding=tiny_qwen2_vl": ([-0.6826, 0.20501, 0.19168, 0.35097, 0.97885, 0.21652],
                                    [-0.56931, -0.37036, -1.02048, 0.56142]),
    "generation=tiny_wan2_1": ([0.07708, -0.22882, -0.11725, -0.0334, -0.59297, -0.59549],
                               [0.60924, 1.99721, 0.3792, -1.5045]),
    "generation=tiny_sd3_pixel": ([0.37158, -0.59041, 0.09277, -0.11303, 0.56815, -0.12102],
                                  [0.60924, 1.99721, 0.3792, -1.5045]),
    "generation=tiny_sd3": ([0.40266, 0.97445, 0.20101, -0.03051, 0.04529, -0.57968],
                            [0.60924, 1.99721, 0.3792, -1.5045]),
    "fusion=none": ([-0.18671, 0.30705, -0.50596, 1.01622, -0.51207, 0.8057],
                    [-0.00757, -0.00912, 0.02977, 0.005]),
    "fusion=half_depth_fusion": ([0.47973, 0.27768, 0.22509, 0.60324, 0.57875, 0.26229],
                                 [-1.70199, 1.45635, 0.88333, 0.31279]),
}


def outputs(swap: str, make_batch) -> tuple[torch.Tensor, torch.Tensor]:
    model = build_model(load_recipe(TINY, [swap] if swap else []).config).eval()
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in model.fusion.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    batch = make_batch(model, seed=0)
    source = model.gen.vae.encode(batch.source)
    noisy = torch.randn(source.shape, generator=g)
    gen = gen_inputs(noisy, torch.full((len(batch),), 0.5), source, batch.has_source, batch.source_order)
    with torch.no_grad():
        out = model(batch.und, gen)
    return out.velocity[0].flatten()[:6], out.und_hidden[0, -1, :4]


@pytest.mark.parametrize("swap", list(EXPECTED))
def test_output_slice_is_pinned(swap, make_batch):
    velocity, hidden = outputs(swap, make_batch)
    want_velocity, want_hidden = (torch.tensor(v) for v in EXPECTED[swap])
    message = f"{swap or 'tiny'}: got {velocity.tolist()}, {hidden.tolist()}"
    torch.testing.assert_close(velocity, want_velocity, rtol=0, atol=1e-4, msg=message)
    torch.testing.assert_close(hidden, want_hidden, rtol=0, atol=1e-4, msg=message)
