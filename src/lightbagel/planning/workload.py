"""What one packed training sequence holds: T2I and edit samples at the recipe's image sizes.

A T2I sample is text + one noisy VAE image; an edit sample is the source as ViT tokens, the
instruction, the source's clean VAE tokens and the noisy target (docs/design.md). A packed
sequence of `seq_len` tokens (LLM tokens + DiT tokens) holds the expected number of each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightbagel.inputs import TEXT, VIT, GenInputs, UndInputs, gen_inputs
from lightbagel.model import LightBagel
from lightbagel.planning.parts import vision_tower


@dataclass(frozen=True)
class SampleShape:
    """Token counts of one sample."""

    kind: str  # "t2i" or "edit"
    text: int  # text tokens (prompt or instruction)
    vit: int  # ViT tokens in the LLM sequence (merged patches + vision start/end), 0 for T2I
    vit_patches: int  # patches the ViT itself runs over
    gen_slots: int  # VAE images: the target, plus the clean source for edits
    gen_per_slot: int  # DiT tokens per VAE image

    @property
    def und(self) -> int:
        return self.text + self.vit

    @property
    def gen(self) -> int:
        return self.gen_slots * self.gen_per_slot

    @property
    def tokens(self) -> int:
        return self.und + self.gen


@dataclass(frozen=True)
class Workload:
    seq_len: int
    edit_fraction: float
    image_size: int
    vit_size: int
    t2i: SampleShape
    edit: SampleShape

    @property
    def samples(self) -> dict[str, float]:
        """Expected samples of each kind in one packed sequence (fractional: an average)."""
        mean = (1 - self.edit_fraction) * self.t2i.tokens + self.edit_fraction * self.edit.tokens
        n = self.seq_len / mean
        return {"t2i": n * (1 - self.edit_fraction), "edit": n * self.edit_fraction}


def vit_geometry(model: LightBagel) -> tuple[int, int]:
    """(patch size, spatial merge size) of the VLM's ViT."""
    vit = vision_tower(model)
    if vit is None:
        raise ValueError("lightbagel-plan needs a VLM with a ViT (model.und.model.model.visual)")
    # From the vision config: Qwen2-VL's ViT module, unlike Qwen2.5-VL's, keeps no copies of these.
    return vit.config.patch_size, vit.config.spatial_merge_size


def make_workload(model: LightBagel, seq_len: int, image_size: int, vit_size: int, text_tokens: int,
                  edit_fraction: float) -> Workload:
    patch, merge = vit_geometry(model)
    side = vit_size // (patch * merge) * merge  # patches per side, a multiple of the merge size
    if side == 0:
        raise ValueError(f"--vit-size {vit_size} is below one ViT token ({patch * merge} px)")
    factor = model.gen.vae.spatial_factor
    per_slot = model.gen.tokens_per_slot(image_size // factor, image_size // factor)
    if per_slot == 0:
        raise ValueError(f"--image-size {image_size} is below one DiT token")
    t2i = SampleShape("t2i", text_tokens, 0, 0, 1, per_slot)
    edit = SampleShape("edit", text_tokens, side * side // merge**2 + 2, side * side, 2, per_slot)
    return Workload(seq_len, edit_fraction, image_size, vit_size, t2i, edit)


def sample_inputs(model: LightBagel, shape: SampleShape, image_size: int, device="meta",
                  dtype=torch.bfloat16) -> tuple[UndInputs, GenInputs]:
    """One sample of `shape` as model inputs: index tensors on the host, floats on `device`."""
    proc = model.und.processor
    text_id = proc.pad_token_id  # any ordinary id: only shapes matter here
    ids, segment, mm = [text_id] * shape.text, [TEXT] * shape.text, [0] * shape.text
    grid = pixels = None
    if shape.vit:
        n = shape.vit - 2
        ids += [proc.vision_start_id] + [proc.image_token_id] * n + [proc.vision_end_id]
        segment += [VIT] * shape.vit
        mm += [0] + [1] * n + [0]
        side = int(round(shape.vit_patches ** 0.5))
        grid = torch.tensor([[1, side, side]])
        vit = vision_tower(model)
        channels = vit.patch_embed.in_channels * vit.patch_embed.temporal_patch_size * vit.config.patch_size**2
        pixels = torch.empty(shape.vit_patches, channels, device=device, dtype=dtype)
    length = len(ids)
    und = UndInputs(
        input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, length, dtype=torch.long),
        mm_token_type_ids=torch.tensor([mm]), segment=torch.tensor([segment]),
        order=torch.arange(length)[None], pixel_values=pixels, image_grid_thw=grid,
    )
    latent = image_size // model.gen.vae.spatial_factor
    z = torch.zeros(1, model.gen.vae.latent_channels, latent, latent, dtype=dtype)
    t = torch.full((1,), 0.5)
    if shape.gen_slots == 1:
        gen = gen_inputs(z, t)
    else:
        gen = gen_inputs(z, t, z, torch.ones(1, dtype=torch.bool), torch.tensor([length]))
    return und, gen.to(device)
