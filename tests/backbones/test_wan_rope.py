"""`generation.rope_theta`: a Wan DiT trained from scratch gets the rotary base its token grid needs."""

from __future__ import annotations

import pytest
import torch

from lightbagel.model import build_model
from lightbagel.recipe import load_recipe


def _spatial_rates(recipe_path, overrides: list[str]) -> torch.Tensor:
    """Radians per token step of the rotary table's row axis, as the adapter looks it up."""
    model = build_model(load_recipe(recipe_path, overrides).config)
    cos, _ = model.gen._rope(torch.zeros(1, 1, dtype=torch.long), 8, 8)
    rope = model.gen.dit.rope
    rows = cos[0, ::8, 0, rope.t_dim:rope.t_dim + rope.h_dim:2]  # (8 rows, h_dim / 2 frequencies)
    return torch.acos(rows[1].clamp(-1, 1))


def test_rope_theta_sets_the_rotary_frequencies(tiny_recipe):
    head = ["generation.config.num_attention_heads=2", "generation.config.attention_head_dim=48",
            "fusion.positional=none"]
    wan = _spatial_rates(tiny_recipe.path, head)
    small = _spatial_rates(tiny_recipe.path, [*head, "generation.rope_theta=100"])
    k = torch.arange(8, dtype=torch.float64)
    torch.testing.assert_close(wan.double(), 10000.0 ** (-k / 8), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(small.double(), 100.0 ** (-k / 8), rtol=1e-4, atol=1e-4)


def test_rope_theta_is_refused_where_there_is_no_rotary(tiny_recipe):
    with pytest.raises(ValueError, match="generation.rope_theta 100.0: SD3 has no rotary"):
        build_model(load_recipe(tiny_recipe.path, ["generation=tiny_sd3_pixel", "generation.rope_theta=100"]).config)
