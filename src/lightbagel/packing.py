"""Packed training batches: every sample's real tokens in one row, nothing else (docs/data.md).

The padded layout pads the understanding side to the longest prompt and gives every T2I sample of
a batch holding an edit an empty source slot that is VAE-encoded and runs through every DiT block.
A packed batch is one row (B = 1): the understanding side holds each sample's real tokens in turn
(tokens hidden by condition dropout are left out: no token may see them), the generation side each
sample's real slots as frames of one latent (a source before its target), and each token carries
its sample id, so the generalized causal rule (fusion/mask.py) keeps samples apart. A row may hold
images of several sizes (`PackedRow`): one `PackedInputs` per size, embedded apart and joined
token by token, as BAGEL packs mixed resolutions into one sequence (docs/data.md). Positions stay
those of the padded form: the understanding side is packed after `embed` (hidden states and
rotary tables gathered), the generation side before it (each slot carries its own rotary frame,
timestep and order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from lightbagel.fusion.mask import OrderMask
from lightbagel.inputs import TARGET_ORDER, GenInputs, UndInputs, gen_inputs


@dataclass
class PackedInputs:
    """One packed row of a batch of B samples, for `LightBagel.forward_packed`."""

    und: UndInputs  # as collated (padded): embedded as is, then its kept tokens gathered
    und_rows: torch.Tensor  # (N,) the sample of each kept und token, ascending
    und_cols: torch.Tensor  # (N,) its position in that sample's padded row
    gen: GenInputs  # (1, C, S, h, w): the batch's real slots, sample after sample
    slot_sample: torch.Tensor  # (S,) the sample of each slot
    targets: torch.Tensor  # (B,) the slot index of each sample's noisy target

    def gather_und(self, hidden: torch.Tensor, rope, adapter) -> tuple[torch.Tensor, object]:
        """(B, L, D) embedded und tokens and their rotary embedding -> the kept tokens as one row."""
        rows, cols = self.und_rows.to(hidden.device), self.und_cols.to(hidden.device)
        return hidden[rows, cols].unsqueeze(0), adapter.gather_rope(rope, rows, cols)

    def mask_parts(self, per_slot: int, first_sample: int = 0) -> tuple[tuple, tuple]:
        """(order, valid, sample) of the und tokens and of the gen tokens; samples from `first_sample`."""
        device = self.gen.order.device
        rows, cols = self.und_rows.to(device), self.und_cols.to(device)
        und = self.und.order.to(device)[rows, cols], self.und.valid.to(device)[rows, cols], rows + first_sample
        gen = tuple(x[0].repeat_interleave(per_slot) for x in (self.gen.order, self.gen.valid))
        return und, (*gen, self.slot_sample.repeat_interleave(per_slot) + first_sample)

    def target_tokens(self, velocity: torch.Tensor, per_slot: int) -> torch.Tensor:
        """(1, S * per_slot, P) row output -> (B, per_slot, P): each sample's target tokens."""
        tokens = velocity[0].unflatten(0, (-1, per_slot))  # (S, per_slot, P)
        return tokens[self.targets.to(tokens.device)]


@dataclass
class PackedRow:
    """Several `PackedInputs` (one per image size) as one row: und tokens of every part, then gen
    tokens of every part; sample ids run on from part to part, so no sample sees another."""

    parts: list[PackedInputs]

    def embed(self, und_adapter, gen_adapter) -> tuple:
        """(h_und, rope_und, h_gen, rope_gen, cond, per_slot): every part embedded, joined along tokens."""
        und = [p.gather_und(*und_adapter.embed(p.und), und_adapter) for p in self.parts]
        gen = [gen_adapter.embed(p.gen) for p in self.parts]
        per_slot = [h.shape[1] // p.gen.valid.shape[1] for (h, _, _), p in zip(gen, self.parts)]
        return (*join_tokens(und), *join_tokens(gen), per_slot)

    def masks(self, per_slot: list[int], backend: str) -> tuple[OrderMask, OrderMask, OrderMask]:
        """Joint, VLM and DiT masks of the row, as `LightBagel._masks` builds them for padded rows."""
        offsets = [0]
        for part in self.parts[:-1]:
            offsets.append(offsets[-1] + len(part.targets))
        und, gen = zip(*(p.mask_parts(n, first) for p, n, first in zip(self.parts, per_slot, offsets)))
        (u_order, u_valid, u_sample), (g_order, g_valid, g_sample) = (
            [torch.cat(column) for column in zip(*side)] for side in (und, gen))
        return _row_masks(u_order, u_valid, u_sample, g_order, g_valid, g_sample, backend)

    def target_tokens(self, velocity: torch.Tensor, per_slot: list[int]) -> list[torch.Tensor]:
        """(1, Lg, P) row output -> per part (B_part, per_slot_part, P): each sample's target tokens."""
        sizes = [n * p.gen.valid.shape[1] for p, n in zip(self.parts, per_slot)]
        return [p.target_tokens(v, n) for p, v, n in zip(self.parts, velocity.split(sizes, dim=1), per_slot)]

    def gen_parts(self, per_slot: list[int]) -> list[tuple[int, GenInputs]]:
        """(tokens, gen inputs) of each part, for reading the head's output part by part."""
        return [(n * p.gen.valid.shape[1], p.gen) for p, n in zip(self.parts, per_slot)]


def join_tokens(items: Sequence):
    """Per-part tensors (1, L_i, ...) (or tuples of them, or None) joined along the token dim."""
    first = items[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return first if len(items) == 1 else torch.cat(list(items), dim=1)
    return type(first)(join_tokens([item[i] for item in items]) for i in range(len(first)))


def _row_masks(u_order, u_valid, u_sample, g_order, g_valid, g_sample, backend: str):
    """Joint, VLM and DiT masks of a row [und tokens; gen tokens], from per-token orders,
    validity and sample ids."""
    order, sample = torch.cat([u_order, g_order])[None], torch.cat([u_sample, g_sample])[None]
    joint = OrderMask.square(order, torch.cat([u_valid, g_valid])[None], backend, sample)
    # The VLM's rule is causal over positions; kept tokens keep their relative order.
    positions = torch.arange(len(u_order), device=u_order.device)[None]
    return joint, OrderMask.square(positions, u_valid[None], backend, u_sample[None]), joint.corner(len(u_order))


def pack(und: UndInputs, noisy: torch.Tensor, t: torch.Tensor, sources: Optional[torch.Tensor],
         source_valid: torch.Tensor, source_order: torch.Tensor) -> PackedInputs:
    """A batch's inputs as one row.

    noisy (B, C, h, w) noised targets at flow times t (B,); sources (R, C, h, w) the clean latents
    of the R samples with `source_valid` (B,) only (None when R = 0), at orders `source_order` (B,). The slots match
    `inputs.gen_inputs` per sample: a source at t = 0, frame 0; the target at frame 1 after a
    visible source and 0 otherwise.
    """
    device = noisy.device
    source_valid = source_valid.to(device)
    counts = 1 + source_valid.long()
    targets = counts.cumsum(0) - 1
    with_source = targets[source_valid] - 1
    n_slots = int(counts.sum())
    latents = noisy.new_empty(n_slots, *noisy.shape[1:])
    latents[targets] = noisy
    if sources is not None:
        latents[with_source] = sources.to(noisy.dtype)
    timesteps = torch.zeros(n_slots, dtype=t.dtype, device=device)
    timesteps[targets] = t
    frame_pos = torch.zeros(n_slots, dtype=torch.long, device=device)
    frame_pos[targets] = source_valid.long()
    order = torch.full((n_slots,), TARGET_ORDER, dtype=torch.long, device=device)
    order[with_source] = source_order.to(device)[source_valid].long()
    valid = torch.ones(1, n_slots, dtype=torch.bool, device=device)
    gen = GenInputs(latents.transpose(0, 1)[None], timesteps[None], frame_pos[None], valid, order[None])
    kept = und.valid
    if not bool(kept.any()):  # every und token dropped: one hidden token keeps the VLM's input non-empty
        kept = torch.zeros_like(kept)
        kept[0, 0] = True
    rows, cols = kept.nonzero(as_tuple=True)
    slot_sample = torch.arange(len(noisy), device=device).repeat_interleave(counts)
    return PackedInputs(und, rows, cols, gen, slot_sample, targets)


def packed_velocity(model, und: UndInputs, noisy: torch.Tensor, t: torch.Tensor, sources: Optional[torch.Tensor],
                    source_valid: torch.Tensor, source_order: torch.Tensor) -> torch.Tensor:
    """(B, per_slot, P) velocity of each sample's target tokens, computed over one packed row."""
    return packed_row_velocities(model, [(und, noisy, t, sources, source_valid, source_order)])[0]


def packed_row_velocities(model, groups: Sequence[tuple]) -> list[torch.Tensor]:
    """Groups of `packed_velocity`'s arguments (one per image size) in one packed row: each
    group's (B_g, per_slot_g, P) target velocities."""
    row = PackedRow([pack(*group) for group in groups])
    per_slot = [model.gen.tokens_per_slot(*group[1].shape[-2:]) for group in groups]
    return row.target_tokens(model.forward_packed(row).velocity, per_slot)


def padded_velocity(model, und: UndInputs, noisy: torch.Tensor, t: torch.Tensor, sources: Optional[torch.Tensor],
                    source_valid: torch.Tensor, source_order: torch.Tensor) -> torch.Tensor:
    """The same over padded rows: the reference layout. Absent and dropped sources get zero latents
    in their (hidden) slots: no token sees them, so their content changes nothing."""
    source = None
    if bool(source_valid.any()):
        source = noisy.new_zeros(noisy.shape)
        source[source_valid] = sources.to(noisy.dtype)
    out = model(und, gen_inputs(noisy, t, source, source_valid, source_order))
    return out.velocity[:, -model.gen.tokens_per_slot(*noisy.shape[-2:]):]


def layout_tokens(batch, multiple: int, layout: str) -> tuple[int, int]:
    """(und, gen) token slots a layout computes for a collated batch, condition dropout left out:
    packed rows hold the real prompt tokens and image slots; padded rows pad prompts to the longest
    and give every sample a source slot once one is an edit. Chat batches (no images) are padded.
    `multiple`: pixels per DiT token side (`GenerationAdapter.vae_multiple`)."""
    groups = getattr(batch, "groups", None)
    if groups is not None:  # several image sizes: a packed row of all, or padded batches size by size
        und, gen = zip(*(layout_tokens(group, multiple, layout) for group in groups))
        return sum(und), sum(gen)
    mask = batch.und.attention_mask
    if getattr(batch, "has_source", None) is None:
        return mask.numel(), 0
    per_slot = (batch.target.shape[-2] // multiple) * (batch.target.shape[-1] // multiple)
    if layout == "packed":
        return int(mask.sum()), per_slot * (len(batch) + int(batch.has_source.sum()))
    return mask.numel(), per_slot * len(batch) * (1 + int(batch.has_source.any()))


def row_velocities(model, groups: Sequence[tuple], layout: str) -> list[torch.Tensor]:
    """A batch of several image sizes (groups as `packed_row_velocities`): one packed row, or
    padded rows group by group (the reference)."""
    if layout == "packed":
        return packed_row_velocities(model, groups)
    return [padded_velocity(model, *group) for group in groups]


# data.packing.layout -> how a training batch runs through the model.
LAYOUTS = {"packed": packed_velocity, "padded": padded_velocity}
