"""The tensors that flow into the fused model: one dataclass per stream, padded per batch.

Lightning moves these dataclasses between devices field by field.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional

import torch

# Segment labels of understanding tokens; condition dropout hides whole segments.
PAD, TEXT, VIT = 0, 1, 2
# Orders are logical positions for the generalized causal mask; the noisy target sits last.
TARGET_ORDER = 1 << 30
# objective.edit_condition -> the encoders of an edit's source image it always hides ("vit", "vae"):
# the paper's "double fusion" ablation (see ObjectiveConfig); training and sampling both read this.
EDIT_HIDES = {"both": frozenset(), "vit": frozenset({"vae"}), "vae": frozenset({"vit"})}


@dataclass
class UndInputs:
    """Text + ViT tokens of the understanding pathway."""

    input_ids: torch.Tensor  # (B, L) with image placeholders expanded
    attention_mask: torch.Tensor  # (B, L) 1 for real tokens, 0 for padding
    mm_token_type_ids: torch.Tensor  # (B, L) 0 text, 1 image (M-RoPE positions)
    segment: torch.Tensor  # (B, L) PAD / TEXT / VIT
    order: torch.Tensor  # (B, L) logical order for the fusion mask
    pixel_values: Optional[torch.Tensor] = None  # ViT patches of every image in the batch
    image_grid_thw: Optional[torch.Tensor] = None  # (num_images, 3)
    keep: Optional[torch.Tensor] = None  # (B, L) False where condition dropout hides a token

    @property
    def valid(self) -> torch.Tensor:
        valid = self.attention_mask.bool()
        return valid if self.keep is None else valid & self.keep

    def to(self, device) -> "UndInputs":
        return _to(self, device)


@dataclass
class GenInputs:
    """VAE latents of the generation pathway: S image slots stacked as frames, the target last."""

    latents: torch.Tensor  # (B, C, S, h, w), already noised in the target slot
    timesteps: torch.Tensor  # (B, S) flow time in [0, 1]; 0 for clean condition images
    frame_pos: torch.Tensor  # (B, S) rotary frame index of each slot
    valid: torch.Tensor  # (B, S) False for absent or dropped condition images
    order: torch.Tensor  # (B, S) logical order of each slot

    def to(self, device) -> "GenInputs":
        return _to(self, device)


def _to(obj, device):
    moved = {f.name: getattr(obj, f.name) for f in fields(obj)}
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in moved.items()}
    return replace(obj, **moved)


def gen_inputs(noisy: torch.Tensor, t: torch.Tensor, source: Optional[torch.Tensor] = None,
               source_valid: Optional[torch.Tensor] = None,
               source_order: Optional[torch.Tensor] = None) -> GenInputs:
    """Slots for one noisy target and an optional clean source image (t = 0), per sample.

    The target's rotary frame is 1 after a visible source and 0 otherwise, the same in training
    and sampling, so a dropped source (CFG's unconditional branch) looks like T2I.
    """
    batch, device = noisy.shape[0], noisy.device
    ones = torch.ones(batch, dtype=torch.bool, device=device)
    target_order = torch.full((batch,), TARGET_ORDER, device=device)
    if source is None or source_valid is None or not bool(source_valid.any()):
        return GenInputs(noisy.unsqueeze(2), t[:, None], torch.zeros(batch, 1, dtype=torch.long, device=device),
                         ones[:, None], target_order[:, None])
    return GenInputs(
        latents=torch.stack([source, noisy], dim=2),
        timesteps=torch.stack([torch.zeros_like(t), t], dim=1),
        frame_pos=torch.stack([torch.zeros_like(source_valid, dtype=torch.long), source_valid.long()], dim=1),
        valid=torch.stack([source_valid, ones], dim=1),
        order=torch.stack([source_order, target_order], dim=1),
    )
