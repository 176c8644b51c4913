"""`none`: no fusion at all, the DiT alone. The baseline of the fusion ablations.

Text never reaches the DiT, so the model can only learn the image distribution (and, for edits,
follow the clean source VAE tokens it attends to in its own self-attention). The blocks have no
parameters; they keep the fused model's loop, its und-side cache and the exporter unchanged.
"""

from __future__ import annotations

from torch import nn

from lightbagel.fusion.blocks import StreamSpec
from lightbagel.recipe.schema import FusionConfig


class NoFusionBlock(nn.Module):
    """Passes both streams through untouched."""

    def und_keys_values(self, h_und, rope_und):
        # Nothing to cache (no generation token reads the understanding side): empty per-row K/V.
        empty = h_und.new_empty(h_und.shape[0], 0)
        return empty, empty

    def forward(self, h_und, h_gen, mask, rope_und, rope_gen, und_kv=None):
        return h_und, h_gen

    def attend_generation(self, h_gen, mask_rows, rope_gen, und_kv):
        return h_gen


def build_no_fusion(cfg: FusionConfig, und: StreamSpec, gen: StreamSpec, heads: int, head_dim: int, depth: int):
    return nn.ModuleList(NoFusionBlock() for _ in range(depth))
