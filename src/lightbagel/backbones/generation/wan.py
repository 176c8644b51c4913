"""Wan2.x DiT adapter: diffusers' WanTransformer3DModel run block by block.

Wan2.2-TI2V conditions every token on its own timestep; we use that for clean condition images
(t = 0) next to the noisy target. Image slots are stacked along the temporal axis, as Wan TI2V
does with frames, and each slot gets its own rotary frame index.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from torch import nn

from lightbagel.backbones.generation.base import GenerationAdapter, LatentCodec
from lightbagel.backbones.loading import load_diffusers_model
from lightbagel.fusion.mask import attend
from lightbagel.inputs import GenInputs
from lightbagel.precision import fp32_region
from lightbagel.recipe.schema import GenerationConfig
from lightbagel.registry import VAE


class WanAdapter(GenerationAdapter):
    # Wan runs its 3D RoPE, timestep embedding/projection and modulation in fp32
    # (https://github.com/Wan-Video/Wan2.2, wan/modules/model.py; diffusers'
    # WanTransformer3DModel._keep_in_fp32_modules).
    keep_in_fp32 = (r"^rope\.", r"^condition_embedder\.(time_embedder|time_proj)\.", r"(^|\.)scale_shift_table$")
    # A Wan block's own forward expects umT5 text, so `block(i)` runs its sub-layers itself.
    blocks, block_called = "dit.blocks", False
    # Wan2.2 keeps its residual stream and output head in fp32 (https://github.com/Wan-Video/Wan2.2,
    # wan/modules/model.py: each block's `x + y * e` and the head run under fp32 autocast); the
    # precision plan sets both (`trainer.fp32_residual`, precision.py).
    fp32_residual = False
    fp32_head = False

    def __init__(self, dit: WanTransformer3DModel, vae: LatentCodec, num_train_timesteps: int = 1000):
        super().__init__()
        self._bind(dit, vae, num_train_timesteps, tuple(dit.config.patch_size))
        if self.patch_size[0] != 1:
            raise ValueError("image slots need a temporal patch size of 1")

    def embed(self, gen: GenInputs):
        # Latents stay fp32 in the sampler; a bf16 model without autocast (inference) takes its dtype.
        x = self.dit.patch_embedding(gen.latents.to(self.dit.patch_embedding.weight.dtype))  # (B, D, S, h', w')
        batch, _, slots, hp, wp = x.shape
        tokens = x.flatten(2).transpose(1, 2).contiguous()
        tokens = tokens.float() if self.fp32_residual else tokens
        per_slot = hp * wp
        t = (gen.timesteps * self.num_train_timesteps).repeat_interleave(per_slot, dim=1)
        emb = self.dit.condition_embedder
        with fp32_region(tokens.device):  # Wan embeds and projects timesteps in fp32 (precision.py)
            freq = emb.timesteps_proj(t.flatten()).unflatten(0, (batch, -1))
            temb = emb.time_embedder(freq.to(emb.time_embedder.linear_1.weight.dtype))
            tproj = emb.time_proj(emb.act_fn(temb)).unflatten(2, (6, -1))
        return tokens, self._cached_rope(gen.frame_pos, hp, wp), (temb, tproj)

    def _cached_rope(self, frame_pos: torch.Tensor, hp: int, wp: int):
        """`_rope`, kept for the last layout asked: every sampling step asks for the same one."""
        if frame_pos.device.type == "meta" or torch.is_grad_enabled():  # training: layouts never repeat
            return self._rope(frame_pos, hp, wp)
        key = (tuple(frame_pos.flatten().tolist()), frame_pos.shape, hp, wp, frame_pos.device)
        memo = getattr(self, "_rope_memo", None)
        if memo is None or memo[0] != key:
            self._rope_memo = (key, self._rope(frame_pos, hp, wp))
        return self._rope_memo[1]

    def _rope(self, frame_pos: torch.Tensor, hp: int, wp: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Wan's 3D rotary table looked up at explicit (frame, row, column) positions."""
        rope = self.dit.rope
        device = frame_pos.device
        rows = torch.arange(hp, device=device).repeat_interleave(wp)
        cols = torch.arange(wp, device=device).repeat(hp)
        frames = frame_pos.repeat_interleave(hp * wp, dim=1)  # (B, L)
        rows, cols = rows.repeat(frame_pos.shape[1]), cols.repeat(frame_pos.shape[1])
        out = []
        for table in (rope.freqs_cos, rope.freqs_sin):
            t, h, w = table.to(device).split([rope.t_dim, rope.h_dim, rope.w_dim], dim=1)
            parts = [t[frames], h[rows].expand(len(frames), -1, -1), w[cols].expand(len(frames), -1, -1)]
            out.append(torch.cat(parts, dim=-1).float().unsqueeze(2))  # (B, L, 1, D)
        return out[0], out[1]

    def rotate(self, x: torch.Tensor, rope) -> torch.Tensor:
        cos, sin = rope
        x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
        cos, sin = cos[..., 0::2], sin[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).type_as(x)

    def block(self, index: int, hidden: torch.Tensor, mask: torch.Tensor, rope, cond) -> torch.Tensor:
        blk = self.dit.blocks[index]
        _, tproj = cond
        mod = (blk.scale_shift_table.unsqueeze(0) + tproj.float()).chunk(6, dim=2)
        shift, scale, gate, c_shift, c_scale, c_gate = (m.squeeze(2) for m in mod)
        io = self._layer_dtype(hidden, blk.attn1.to_q)
        x = (blk.norm1(hidden.float()) * (1 + scale) + shift).to(io)
        hidden = (hidden.float() + self._self_attention(blk.attn1, x, mask, rope) * gate).type_as(hidden)
        # The text cross-attention sub-layer is skipped: umT5 is never loaded (docs/design.md).
        x = (blk.norm3(hidden.float()) * (1 + c_scale) + c_shift).to(io)
        return (hidden.float() + blk.ffn(x).float() * c_gate).type_as(hidden)

    def _self_attention(self, attn, x, mask, rope) -> torch.Tensor:
        q, k, v = attn.norm_q(attn.to_q(x)), attn.norm_k(attn.to_k(x)), attn.to_v(x)
        q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))
        q, k = self.rotate(q, rope), self.rotate(k, rope)
        out = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask)
        return attn.to_out[0](out.transpose(1, 2).flatten(2).type_as(x))

    def _layer_dtype(self, hidden: torch.Tensor, layer: nn.Module) -> torch.dtype:
        """What a sub-layer's input is cast to: the stream's dtype, or with an fp32 stream the layer's
        own (autocast, or FSDP2's compute copy, then runs the matmul in the compute dtype)."""
        return layer.weight.dtype if self.fp32_residual else hidden.dtype

    def head(self, hidden: torch.Tensor, cond) -> torch.Tensor:
        temb, _ = cond
        shift, scale = (self.dit.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
        x = self.dit.norm_out(hidden.float()) * (1 + scale.squeeze(2)) + shift.squeeze(2)
        proj = self.dit.proj_out
        if self.fp32_head:  # Wan runs its head under fp32 autocast: the weights are read in fp32
            with fp32_region(x.device):
                return F.linear(x, proj.weight.float(), None if proj.bias is None else proj.bias.float())
        return proj(x.type_as(hidden))


    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        b, c, s, h, w = latents.shape
        pt, ph, pw = self.patch_size
        x = latents.reshape(b, c, s // pt, pt, h // ph, ph, w // pw, pw)
        return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, -1, pt * ph * pw * c)

    def unpatchify(self, tokens: torch.Tensor, slots: int, height: int, width: int) -> torch.Tensor:
        b = tokens.shape[0]
        pt, ph, pw = self.patch_size
        x = tokens.reshape(b, slots // pt, height // ph, width // pw, pt, ph, pw, -1)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, -1, slots, height, width)


def build_wan(cfg: GenerationConfig, dtype: torch.dtype = torch.float32) -> WanAdapter:
    """`dtype`: what a checkpoint is read in (the precision plan sets storage afterwards)."""
    dit = load_diffusers_model(WanTransformer3DModel, cfg, dtype)
    if cfg.rope_theta is not None:  # the table is a non-persistent buffer: rebuilt, never loaded
        c = dit.config
        dit.rope = WanRotaryPosEmbed(c.attention_head_dim, c.patch_size, c.rope_max_seq_len, theta=cfg.rope_theta)
    vae = VAE.get(cfg.vae.adapter)(cfg.vae)
    vae.requires_grad_(not cfg.vae.freeze)
    adapter = WanAdapter(dit, vae, cfg.num_train_timesteps)
    # Without umT5 the text embedder and cross-attention never run; keep them out of the optimizer.
    for blk in dit.blocks:
        blk.attn2.requires_grad_(False)
        blk.norm2.requires_grad_(False)
    dit.condition_embedder.text_embedder.requires_grad_(False)
    if cfg.freeze:
        dit.requires_grad_(False)
    return adapter
