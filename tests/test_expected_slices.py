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
    "": ([0.08167, 0.95249, -0.09335, 1.10766, 0.21417, 0.38569], [-1.63171, -0.63307, 1.02431, 0.84574]),
    "understanding=tiny_qwen2_vl": ([-0.55149, 0.22368, 0.27378, -0.53812, 0.80588, -0.09121],
                                    [0.24005, 0.5759, -0.2267, 0.80575]),
    "generation=tiny_wan2_1": ([-0.42888, 0.29789, -0.2585, 0.19484, -0.15337, -1.01035],
                               [0.79685, 1.16682, 1.6892, -2.07704]),
    "generation=tiny_sd3_pixel": ([0.3924, -0.12934, 0.17105, 0.03391, 0.55753, -0.30136],
                                  [0.79685, 1.16682, 1.6892, -2.07704]),
    "generation=tiny_sd3": ([0.21679, 0.65861, 0.10944, -0.48653, -0.14768, -0.66453],
                            [0.79685, 1.16682, 1.6892, -2.07704]),
    "fusion=none": ([-0.18671, 0.30705, -0.50596, 1.01622, -0.51207, 0.8057],
                    [-0.01386, 0.02619, 0.02611, 0.01146]),
    "fusion=half_depth_fusion": ([0.03578, 1.09026, 0.10841, 1.18222, -0.13952, 0.44949],
                                 [-2.72332, -0.26859, 0.59931, 0.75381]),
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
