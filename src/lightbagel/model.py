"""The fused model: VLM blocks and DiT blocks in lockstep, a fusion block after each DiT block."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from lightbagel.backbones.generation.base import GenerationAdapter
from lightbagel.backbones.understanding.base import UnderstandingAdapter
from lightbagel.fusion import StreamSpec, causal_mask, generalized_causal_mask, vlm_depth_schedule
from lightbagel.inputs import GenInputs, UndInputs
from lightbagel.recipe.schema import FusionConfig, RecipeConfig
from lightbagel.registry import FUSION, GENERATION, UNDERSTANDING


@dataclass
class FusedOutput:
    und_hidden: torch.Tensor  # (B, Lu, D_und) after the last VLM block, before the final norm
    velocity: torch.Tensor  # (B, Lg, p * C) per-token prediction in the adapter's patchify layout


class LightBagel(nn.Module):
    def __init__(self, und: UnderstandingAdapter, gen: GenerationAdapter, fusion: nn.ModuleList,
                 schedule: list[int]):
        super().__init__()
        self.und, self.gen, self.fusion = und, gen, fusion
        self.schedule = schedule  # VLM blocks run before fusion block i

    def forward(self, und: UndInputs, gen: GenInputs) -> FusedOutput:
        h_und, rope_und = self.und.embed(und)
        h_gen, rope_gen, cond = self.gen.embed(gen)
        joint, und_mask, gen_mask = self._masks(und, gen, h_gen.shape[1])
        ran = 0
        for i, fusion in enumerate(self.fusion):
            h_und, ran = self._run_vlm(h_und, und_mask, rope_und, ran, self.schedule[i])
            h_gen = self.gen.block(i, h_gen, gen_mask, rope_gen, cond)
            h_und, h_gen = fusion(h_und, h_gen, joint, rope_und, rope_gen)
        for j in range(len(self.fusion), self.gen.num_layers):  # a DiT deeper than the fusion stack
            h_gen = self.gen.block(j, h_gen, gen_mask, rope_gen, cond)
        h_und, _ = self._run_vlm(h_und, und_mask, rope_und, ran, self.und.num_layers)
        return FusedOutput(h_und, self.gen.head(h_gen, cond))

    def _run_vlm(self, h_und, mask, rope, ran: int, until: int) -> tuple[torch.Tensor, int]:
        for j in range(ran, until):
            h_und = self.und.block(j, h_und, mask, rope)
        return h_und, max(ran, until)

    def _masks(self, und: UndInputs, gen: GenInputs, gen_len: int):
        per_slot = gen_len // gen.valid.shape[1]
        gen_valid = gen.valid.repeat_interleave(per_slot, dim=1)
        gen_order = gen.order.repeat_interleave(per_slot, dim=1)
        und_valid = und.valid
        joint = generalized_causal_mask(torch.cat([und.order, gen_order], 1), torch.cat([und_valid, gen_valid], 1))
        n_und = und_valid.shape[1]
        return joint, causal_mask(und_valid), joint[..., n_und:, n_und:]

    def understanding_logits(self, out: FusedOutput) -> torch.Tensor:
        return self.und.logits(out.und_hidden)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}


def fusion_geometry(cfg: FusionConfig, und: UnderstandingAdapter, gen: GenerationAdapter) -> tuple[int, int]:
    """Heads and head dim of the joint attention; each stream's rotary needs the same head dim."""
    heads = cfg.num_heads or und.num_heads
    head_dim = cfg.head_dim or und.head_dim
    if cfg.positional == "per_stream" and not head_dim == und.head_dim == gen.head_dim:
        raise ValueError(
            f"fusion.head_dim {head_dim} must equal the VLM's ({und.head_dim}) and the DiT's "
            f"({gen.head_dim}) head dim for per-stream rotary embeddings; set fusion.positional: none"
        )
    return heads, head_dim


def build_model(recipe: RecipeConfig, device: Optional[torch.device | str] = None) -> LightBagel:
    """Builds the fused model from a validated recipe (random parts seeded by `recipe.seed`)."""
    torch.manual_seed(recipe.seed)
    with torch.device(device) if device is not None else nullcontext():
        und = UNDERSTANDING.get(recipe.understanding.adapter)(recipe.understanding)
        gen = GENERATION.get(recipe.generation.adapter)(recipe.generation)
        heads, head_dim = fusion_geometry(recipe.fusion, und, gen)
        specs = StreamSpec(und.hidden_size, und.rotate), StreamSpec(gen.hidden_size, gen.rotate)
        fusion = FUSION.get(recipe.fusion.block)(recipe.fusion, *specs, heads, head_dim, gen.num_layers)
    schedule = vlm_depth_schedule(len(fusion), und.num_layers, recipe.fusion.depth_offset)
    return LightBagel(und, gen, fusion, schedule)
