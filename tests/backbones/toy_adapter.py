"""A generation adapter defined outside the package: everything lightbagel needs to know about it
is on its class (test_new_adapter.py registers it and trains it from one card)."""

from __future__ import annotations

import torch

from lightbagel.backbones.generation.wan import WanAdapter, build_wan
from lightbagel.recipe.schema import GenerationConfig


class ToyWanAdapter(WanAdapter):
    """Wan with its patch embedding also kept in fp32: a fact only this class states."""

    keep_in_fp32 = (*WanAdapter.keep_in_fp32, r"^patch_embedding\.")


def build_toy_wan(cfg: GenerationConfig, dtype: torch.dtype = torch.float32) -> ToyWanAdapter:
    wan = build_wan(cfg, dtype)
    return ToyWanAdapter(wan.dit, wan.vae, wan.num_train_timesteps)
