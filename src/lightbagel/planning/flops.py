"""FLOPs of one packed training sequence, per part, from parameter counts and token counts.

Formula (stated in docs/full_size.md). For a part whose tokens multiply through N active
weights, the forward costs 2 N per token. The backward costs 2x the forward where the part is
trainable (input and weight gradients: "6N" in all) and 1x where it is frozen but gradients
flow through it to trainable parts (input gradients only: "4N"): the VLM blocks after the
first fusion block, when fusion writes back into the und stream. The ViT and the VAE run
forward only. Attention adds 4 Lq Lk d per layer forward (QK^T and AV, d = heads x head dim),
summed per sample (block-diagonal packing), with the full rectangle counted (masked kernels
compute it), and 2x that backward wherever gradients flow. Activation checkpointing recomputes
the forward of every part that has a backward. The VAE encoder's convolutions are counted by
running it on the meta device under `torch.utils.flop_counter`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from lightbagel.model import LightBagel
from lightbagel.planning.parts import Part, fusion_split, model_parts, vision_tower
from lightbagel.planning.workload import SampleShape, Workload


@dataclass(frozen=True)
class PartFlops:
    name: str
    forward: float
    backward: float
    recompute: float  # extra forward under activation checkpointing

    @property
    def model(self) -> float:
        return self.forward + self.backward

    @property
    def with_checkpointing(self) -> float:
        return self.model + self.recompute


def vae_encode_flops(model: LightBagel, image_size: int) -> float:
    """FLOPs of encoding one image, counted op by op on the meta device."""
    vae = model.gen.vae
    dtype = next(vae.parameters(), torch.empty(())).dtype
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        vae.encode(torch.empty(1, 3, image_size, image_size, device="meta", dtype=dtype))
    return float(counter.get_total_flops())


def _llm_grad_fraction(model: LightBagel) -> float:
    """Share of VLM blocks gradients flow through: those after the first fusion block."""
    if not len(model.fusion) or not getattr(model.fusion[0], "und_writeback", False):
        return 0.0  # the VLM stream never sees a trainable weight: forward only
    layers = model.und.num_layers
    return (layers - min(model.schedule[0], layers)) / layers


def _attention(shape: SampleShape, model: LightBagel) -> dict[str, float]:
    """Forward attention FLOPs of one sample per part."""
    und, gen = shape.und, shape.gen
    out = {"VLM LLM": 4.0 * und * und * model.und.num_heads * model.und.head_dim * model.und.num_layers,
           "DiT": 4.0 * gen * gen * model.gen.num_heads * model.gen.head_dim * model.gen.num_layers,
           "ViT": 0.0, "fusion": 0.0}
    vit = vision_tower(model)
    if vit is not None and shape.vit_patches:
        # Qwen2-VL: width `embed_dim` (its `hidden_size` is the merger's output) and no window attention.
        p, width = shape.vit_patches, getattr(vit.config, "embed_dim", vit.config.hidden_size)
        full = len(getattr(vit, "fullatt_block_indexes", range(len(vit.blocks))))
        window_size = getattr(vit.config, "window_size", None)
        window = min(p, (window_size // vit.config.patch_size) ** 2) if window_size else p
        out["ViT"] = 4.0 * width * p * (full * p + (len(vit.blocks) - full) * window)
    for blk in model.fusion:
        d = blk.gen.heads * blk.gen.head_dim if hasattr(blk, "gen") else 0
        queries = und + gen if getattr(blk, "und_writeback", False) else gen
        out["fusion"] += 4.0 * queries * (und + gen) * d
    return out


def _weights(shape: SampleShape, model: LightBagel, parts: dict[str, Part]) -> dict[str, float]:
    """Forward matmul FLOPs of one sample per part: 2 x active weights x tokens."""
    out = {"VLM LLM": 2.0 * parts["VLM LLM"].active * shape.und, "DiT": 2.0 * parts["DiT"].active * shape.gen}
    und_w, gen_w = fusion_split(model)
    out["fusion"] = 2.0 * (und_w * shape.und + gen_w * shape.gen)
    vit = vision_tower(model)
    out["ViT"] = 0.0
    if vit is not None and shape.vit_patches:
        merger = sum(p.numel() for p in vit.merger.parameters()) if hasattr(vit, "merger") else 0
        merge = vit.config.spatial_merge_size**2
        out["ViT"] = 2.0 * ((parts["ViT"].active - merger) * shape.vit_patches + merger * shape.vit_patches / merge)
    return out


def sequence_flops(model: LightBagel, workload: Workload) -> list[PartFlops]:
    """Forward, backward and recompute FLOPs per part for one packed sequence."""
    parts = {p.name: p for p in model_parts(model)}
    grad = {"VLM LLM": _llm_grad_fraction(model), "ViT": 0.0, "DiT": 1.0, "fusion": 1.0}
    weight_bwd = {"VLM LLM": 1.0, "ViT": 0.0, "DiT": 2.0, "fusion": 2.0}  # x forward, where grads flow
    totals = {name: [0.0, 0.0] for name in grad}  # forward, backward
    for kind, count in workload.samples.items():
        shape = getattr(workload, kind)
        weights, attention = _weights(shape, model, parts), _attention(shape, model)
        for name in grad:
            totals[name][0] += count * (weights[name] + attention[name])
            totals[name][1] += count * grad[name] * (weight_bwd[name] * weights[name] + 2.0 * attention[name])
    rows = [PartFlops(n, f, b, grad[n] * f if grad[n] else 0.0) for n, (f, b) in totals.items()]
    images = sum(count * getattr(workload, kind).gen_slots for kind, count in workload.samples.items())
    rows.append(PartFlops("VAE", images * vae_encode_flops(model, workload.image_size), 0.0, 0.0))
    return rows
