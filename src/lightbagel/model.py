"""The fused model: VLM blocks and DiT blocks in lockstep, a fusion block after each DiT block."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field, fields, replace
from typing import Optional

import torch
from torch import nn

from lightbagel.backbones.generation.base import GenerationAdapter
from lightbagel.backbones.understanding.base import UnderstandingAdapter
from lightbagel.flow_matching import PREDICTIONS
from lightbagel.fusion import StreamSpec, vlm_depth_schedule
from lightbagel.fusion.blocks import PER_STREAM_ROTARY
from lightbagel.fusion.mask import OrderMask, causal_order_mask
from lightbagel.fusion.prefix import PrefixMask
from lightbagel.inputs import GenInputs, UndInputs
from lightbagel.packing import PackedInputs, PackedRow
from lightbagel.precision import precision_of
from lightbagel.recipe.schema import FusionConfig, RecipeConfig
from lightbagel.registry import FUSION, GENERATION, UNDERSTANDING


@dataclass
class FusedOutput:
    und_hidden: torch.Tensor  # (B, Lu, D_und) after the last VLM block, before the final norm
    velocity: torch.Tensor  # (B, Lg, p * C) per-token prediction in the adapter's patchify layout


@dataclass
class UndCache:
    """The noise-free understanding side of a batch, computed once and reused at every step.

    Holds, per fusion block, the und-side keys/values (B, Lu, H, D) plus the und tokens' orders
    and validity for the joint mask. With `und_writeback` the und states depend on the clean
    source VAE tokens (never on the noisy target), so a cache belongs to one batch of prompts,
    sources and CFG branches; `rows` picks the branches still needed.
    """

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    order: torch.Tensor  # (B, Lu)
    valid: torch.Tensor  # (B, Lu)
    source: Optional["SourceCache"] = None  # the clean source slots' K/V, when the batch has any
    # `forward_generation`'s masks, built at its first call and reused at every later step.
    masks: dict = field(default_factory=dict, repr=False, compare=False)

    def rows(self, index: slice) -> "UndCache":
        source = None if self.source is None else self.source.rows(index)
        return UndCache([(k[index], v[index]) for k, v in self.kv], self.order[index], self.valid[index], source)


@dataclass
class SourceCache:
    """The clean source slots' keys and values in every DiT and fusion attention (fusion/prefix.py),
    recorded at the first step; with it a later step runs the target slot's tokens alone."""

    dit: list  # per DiT attention call: (k, v) of the source tokens, (B, H, Ls, D)
    fusion: list  # per fusion attention call, likewise
    order: torch.Tensor  # (B, Ls) per source token
    valid: torch.Tensor  # (B, Ls)

    def rows(self, index: slice) -> "SourceCache":
        rows = lambda store: [(k[index], v[index]) for k, v in store]  # noqa: E731
        return SourceCache(rows(self.dit), rows(self.fusion), self.order[index], self.valid[index])


class LightBagel(nn.Module):
    # Methods the trainer calls besides `forward` (packed rows: packing.py; the understanding
    # objective: training/module.py); FSDP2 gathers the root's weights around each.
    fsdp_entry_points = ("forward_packed", "vlm_logits")
    def __init__(self, und: UnderstandingAdapter, gen: GenerationAdapter, fusion: nn.ModuleList,
                 schedule: list[int]):
        super().__init__()
        self.und, self.gen, self.fusion = und, gen, fusion
        self.schedule = schedule  # VLM blocks run before fusion block i
        self.attention = "auto"  # `fusion.attention`: how `OrderMask`s are applied (fusion/mask.py)
        self.prediction = "velocity"  # `objective.prediction`: what the DiT head outputs

    def forward(self, und: UndInputs, gen: GenInputs) -> FusedOutput:
        return self._run(und, gen, keep_kv=False)[0]

    def forward_packed(self, packed: PackedInputs | PackedRow) -> FusedOutput:
        """`forward` over a packed row (packing.py): (1, N, D_und) und states and (1, Lg, p * C)
        velocity; a `PackedRow` joins parts of several image sizes."""
        row = packed if isinstance(packed, PackedRow) else PackedRow([packed])
        h_und, rope_und, h_gen, rope_gen, cond, per_slot = row.embed(self.und, self.gen)
        masks = row.masks(per_slot, self.attention)
        return self._stack(h_und, h_gen, rope_und, rope_gen, cond, masks, row.gen_parts(per_slot), keep_kv=False)[0]

    def _run(self, und: UndInputs, gen: GenInputs, keep_kv: bool) -> tuple[FusedOutput, list]:
        h_und, rope_und = self.und.embed(und)
        h_gen, rope_gen, cond = self.gen.embed(gen)
        joint, und_mask, gen_mask = self._masks(und, gen, h_gen.shape[1])
        if keep_kv and gen.valid.shape[1] > 1:  # edits: also record the clean source slots' K/V
            joint, gen_mask = self._recording(joint, gen_mask, und.order.shape[1], h_gen.shape[1] // gen.valid.shape[1])
        out, kv = self._stack(h_und, h_gen, rope_und, rope_gen, cond, (joint, und_mask, gen_mask), gen, keep_kv)
        source = None
        if isinstance(gen_mask, PrefixMask):
            n_src = gen_mask.length
            source = SourceCache(gen_mask.store, joint.store, gen_mask.k_order[:, :n_src], gen_mask.k_valid[:, :n_src])
        return out, (kv, source)

    def _stack(self, h_und, h_gen, rope_und, rope_gen, cond, masks, gen: GenInputs | list,
               keep_kv: bool) -> tuple[FusedOutput, list]:
        """Every VLM, DiT and fusion block in lockstep; with `keep_kv` the und K/V of each fusion block."""
        joint, und_mask, gen_mask = masks
        ran, kv = 0, []
        for i, fusion in enumerate(self.fusion):
            h_und, ran = self._run_vlm(h_und, und_mask, rope_und, ran, self.schedule[i])
            h_gen = self.gen.block(i, h_gen, gen_mask, rope_gen, cond)
            und_kv = fusion.und_keys_values(h_und, rope_und) if keep_kv else None
            kv.append(und_kv)
            h_und, h_gen = fusion(h_und, h_gen, joint, rope_und, rope_gen, und_kv=und_kv)
        h_gen = self._dit_tail(h_gen, gen_mask, rope_gen, cond)
        h_und, _ = self._run_vlm(h_und, und_mask, rope_und, ran, self.und.num_layers)
        return FusedOutput(h_und, self._velocity(self.gen.head(h_gen, cond), gen)), kv

    @staticmethod
    def _recording(joint: OrderMask, gen_mask: OrderMask, n_und: int, per_slot: int):
        """Masks that keep each attention call's source-slot K/V (all slots but the last, the target)."""
        n_src = gen_mask.k_order.shape[1] - per_slot
        keep = lambda m, at: PrefixMask(**{**_fields(m), "at": at, "length": n_src})  # noqa: E731
        return keep(joint, n_und), keep(gen_mask, 0)

    def _dit_tail(self, h_gen, mask, rope, cond) -> torch.Tensor:
        """DiT blocks past the fusion stack (none with the built-in fusion types)."""
        for j in range(len(self.fusion), self.gen.num_layers):
            h_gen = self.gen.block(j, h_gen, mask, rope, cond)
        return h_gen

    def _run_vlm(self, h_und, mask, rope, ran: int, until: int) -> tuple[torch.Tensor, int]:
        for j in range(ran, until):
            h_und = self.und.block(j, h_und, mask, rope)
        return h_und, max(ran, until)

    def _masks(self, und: UndInputs, gen: GenInputs, gen_len: int) -> tuple[OrderMask, OrderMask, OrderMask]:
        """Joint, VLM and DiT masks of one batch, as orders: each builds its kernel form once."""
        per_slot = gen_len // gen.valid.shape[1]
        gen_valid = gen.valid.repeat_interleave(per_slot, dim=1)
        gen_order = gen.order.repeat_interleave(per_slot, dim=1)
        # Und index tensors may sit on the host while the model runs elsewhere (meta-device shape runs).
        und_valid, und_order = und.valid.to(gen_order.device), und.order.to(gen_order.device)
        order, valid = torch.cat([und_order, gen_order], 1), torch.cat([und_valid, gen_valid], 1)
        joint = OrderMask.square(order, valid, self.attention)
        return joint, causal_order_mask(und_valid, self.attention), joint.corner(und_valid.shape[1])

    @property
    def supports_cache(self) -> bool:
        """Whether every fusion block can run its generation side against cached und K/V."""
        return all(hasattr(f, "und_keys_values") and hasattr(f, "attend_generation") for f in self.fusion)

    def forward_with_cache(self, und: UndInputs, gen: GenInputs) -> tuple[FusedOutput, UndCache]:
        """`forward`, also returning the und-side K/V of every fusion block for `forward_generation`.

        The noisy target's content does not matter to the cache (no und token sees it), so the
        first sampling step computes both at once.
        """
        out, (kv, source) = self._run(und, gen, keep_kv=True)
        return out, UndCache(kv, und.order, und.valid, source)

    def forward_generation(self, gen: GenInputs, cache: UndCache) -> torch.Tensor:
        """The velocity of `forward` for these gen inputs, skipping the VLM: (B, Lg, p * C).

        With source K/V in the cache only the target slot runs, and only its tokens are returned.
        """
        if cache.source is not None:
            gen = _target_slot(gen)
        h_gen, rope_gen, cond = self.gen.embed(gen)
        key = h_gen.shape[1]  # one cache view holds one batch of branches; the target length may vary
        if key not in cache.masks:
            cache.masks[key] = self._generation_masks(cache, gen, key)
        gen_mask, rows = cache.masks[key]
        for i, fusion in enumerate(self.fusion):
            h_gen = self.gen.block(i, h_gen, gen_mask, rope_gen, cond)
            h_gen = fusion.attend_generation(h_gen, rows, rope_gen, cache.kv[i])
        return self._velocity(self.gen.head(self._dit_tail(h_gen, gen_mask, rope_gen, cond), cond), gen)

    def _velocity(self, out: torch.Tensor, gen: GenInputs | list) -> torch.Tensor:
        """The head's output (B, Lg, p * C) read as a velocity, per `objective.prediction`."""
        if self.prediction == "velocity":  # as is: no patchified copy of the latents per forward
            return out
        if isinstance(gen, list):  # a packed row's parts, (tokens, GenInputs) each: read part by part
            pieces = out.split([n for n, _ in gen], dim=1)
            return torch.cat([self._velocity(o, part) for o, (_, part) in zip(pieces, gen)], dim=1)
        per_slot = out.shape[1] // gen.timesteps.shape[1]
        t = gen.timesteps.repeat_interleave(per_slot, dim=1)[..., None]
        return PREDICTIONS[self.prediction](out, self.gen.patchify(gen.latents).type_as(out), t.to(out.dtype))

    def _generation_masks(self, cache: UndCache, gen: GenInputs, gen_len: int) -> tuple[OrderMask, OrderMask]:
        """The DiT mask and the fusion blocks' gen rows for `forward_generation`."""
        if cache.source is None:
            joint, _, gen_mask = self._masks(cache, gen, gen_len)
            return gen_mask, joint.rows(cache.order.shape[1])
        src, n_und = cache.source, cache.order.shape[1]
        n_src = src.order.shape[1]
        # Keys: [und; sources; target] in a fusion block, [sources; target] in a DiT block.
        joint, _, _ = self._masks(replace(cache, order=torch.cat([cache.order.to(src.order.device), src.order], 1),
                                          valid=torch.cat([cache.valid.to(src.valid.device), src.valid], 1)),
                                  gen, gen_len)
        replay = lambda m, store, at: PrefixMask(**{**_fields(m), "store": store, "at": at,  # noqa: E731
                                                    "length": n_src, "replay": True})
        return replay(joint.corner(n_und), src.dit, 0).rows(n_src), replay(joint, src.fusion, n_und).rows(n_und + n_src)

    def vlm_logits(self, und: UndInputs) -> torch.Tensor:
        """Next-token logits (B, L, vocab) of the VLM alone, for the understanding objective:
        understanding bypasses fusion, as HF `generate` on the VLM does in the pipeline."""
        hidden, rope = self.und.embed(und)
        mask = causal_order_mask(und.valid.to(hidden.device), self.attention)
        hidden, _ = self._run_vlm(hidden, mask, rope, 0, self.und.num_layers)
        return self.und.logits(hidden)

    def understanding_logits(self, out: FusedOutput) -> torch.Tensor:
        return self.und.logits(out.und_hidden)


def _target_slot(gen: GenInputs) -> GenInputs:
    return GenInputs(gen.latents[:, :, -1:], gen.timesteps[:, -1:], gen.frame_pos[:, -1:], gen.valid[:, -1:],
                     gen.order[:, -1:])


def _fields(mask: OrderMask) -> dict:
    """An OrderMask's constructor arguments, to rebuild it as a `PrefixMask`."""
    return {f.name: getattr(mask, f.name) for f in fields(OrderMask) if not f.name.startswith("_")}


def fusion_geometry(cfg: FusionConfig, und: UnderstandingAdapter, gen: GenerationAdapter) -> tuple[int, int]:
    """Heads and head dim of the joint attention; each stream's rotary needs the same head dim."""
    heads = cfg.num_heads or und.num_heads
    head_dim = cfg.head_dim or und.head_dim
    # A tower without rotary embeddings (`has_rotary = False`, e.g. SD3) rotates nothing, at any width.
    gen_dim = gen.head_dim if getattr(gen, "has_rotary", True) else head_dim
    if PER_STREAM_ROTARY[cfg.positional] and not head_dim == und.head_dim == gen_dim:
        raise ValueError(
            f"fusion.head_dim {head_dim} must equal the VLM's ({und.head_dim}) and the DiT's "
            f"({gen.head_dim}) head dim for per-stream rotary embeddings; set fusion.positional: none"
        )
    return heads, head_dim


def build_model(recipe: RecipeConfig, device: Optional[torch.device | str] = None) -> LightBagel:
    """Builds the fused model from a validated recipe (random parts seeded by `recipe.seed`).

    Checkpoints are read in the dtype the precision plan stores them in (frozen: bf16 under
    bf16-mixed); random parts are fp32 until `precision.apply_precision` runs.
    """
    torch.manual_seed(recipe.seed)
    precision = precision_of(recipe.trainer)
    und_cfg, gen_cfg = recipe.understanding, recipe.generation
    with torch.device(device) if device is not None else nullcontext():
        und = UNDERSTANDING.get(und_cfg.adapter)(und_cfg, precision.read_dtype(frozen=und_cfg.freeze))
        gen = GENERATION.get(gen_cfg.adapter)(gen_cfg, precision.read_dtype(frozen=gen_cfg.freeze))
        heads, head_dim = fusion_geometry(recipe.fusion, und, gen)
        specs = StreamSpec(und.hidden_size, und.rotate), StreamSpec(gen.hidden_size, gen.rotate)
        fusion = FUSION.get(recipe.fusion.block)(recipe.fusion, *specs, heads, head_dim, gen.num_layers)
    schedule = vlm_depth_schedule(len(fusion), und.num_layers, recipe.fusion.depth_offset)
    model = LightBagel(und, gen, fusion, schedule)
    # Which encoders of an edit source the model was trained to see; the sampler hides the other.
    model.edit_condition = recipe.objective.edit_condition
    model.attention = recipe.fusion.attention
    model.prediction = recipe.objective.prediction
    und.processor.edit_layout = recipe.fusion.edit_layout
    return model


def without_weights(recipe: RecipeConfig) -> RecipeConfig:
    """The same recipe with every backbone built from its card's `config`: nothing is read."""
    gen = replace(recipe.generation, load_weights=False, vae=replace(recipe.generation.vae, load_weights=False))
    return replace(recipe, understanding=replace(recipe.understanding, load_weights=False), generation=gen)


def build_skeleton(recipe: RecipeConfig, device: torch.device | str = "meta") -> LightBagel:
    """The recipe's full architecture from the cards' shipped configs, on `device` (default meta:
    no memory, no download); what `lightbagel-plan` counts and the shape tests run."""
    return build_model(without_weights(recipe), device=device)
