"""SD3-style MMDiT adapter: diffusers' SD3Transformer2DModel run block by block, and its VAE.

An MMDiT block is a joint attention over [image tokens; text tokens] with separate weights per
stream. Text reaches the DiT through fusion here (docs/design.md), so only the image stream of each
block runs; the text stream's weights (`context_embedder`, `add_*_proj`, `*_context`) stay out of
the optimizer. Without a CLIP pooled embedding the pooled projection gets zeros.

SD3 has no rotary embedding: positions enter once, as absolute 2D sin-cos embeddings added by
`pos_embed`. Each image slot gets the same 2D table; condition slots differ from the target by
their timestep (t = 0), so `rotate` is the identity. SD3's adaLN takes one timestep per sample;
the adapter modulates every token with its own timestep through the same layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, SD3Transformer2DModel

from lightbagel.backbones.generation.base import GenerationAdapter, LatentCodec
from lightbagel.backbones.generation.wan import WanAdapter
from lightbagel.backbones.loading import load_diffusers_model
from lightbagel.fusion.mask import attend
from lightbagel.inputs import GenInputs
from lightbagel.precision import fp32_region
from lightbagel.recipe.schema import GenerationConfig, VAEConfig
from lightbagel.registry import VAE


class SD3Adapter(GenerationAdapter):
    has_rotary = False  # positions are absolute embeddings; fusion needs no matching head dim
    keep_in_fp32 = (r"^time_text_embed\.timestep_embedder\.",)  # Wan's time path; no rotary, no table
    # Like Wan, `block(i)` runs a block's image-stream sub-layers itself (no text stream).
    blocks, block_called = "dit.transformer_blocks", False

    def __init__(self, dit: SD3Transformer2DModel, vae: LatentCodec, num_train_timesteps: int = 1000):
        super().__init__()
        self._bind(dit, vae, num_train_timesteps, (1, dit.config.patch_size, dit.config.patch_size))

    def embed(self, gen: GenInputs):
        batch, channels, slots, h, w = gen.latents.shape
        frames = gen.latents.transpose(1, 2).reshape(batch * slots, channels, h, w)
        frames = frames.to(self.dit.pos_embed.proj.weight.dtype)  # as Wan's: fp32 latents, a bf16 model
        tokens = self.dit.pos_embed(frames).unflatten(0, (batch, slots)).flatten(1, 2)  # (B, S*h'*w', D)
        per_slot = tokens.shape[1] // slots
        t = (gen.timesteps * self.num_train_timesteps).repeat_interleave(per_slot, dim=1)
        emb = self.dit.time_text_embed
        with fp32_region(tokens.device):  # the timestep path in fp32, as Wan's (precision.py)
            freq = emb.time_proj(t.flatten())
            temb = emb.timestep_embedder(freq.to(emb.timestep_embedder.linear_1.weight.dtype))
        temb = temb.to(tokens.dtype).unflatten(0, (batch, -1))
        pooled = torch.zeros(batch, emb.text_embedder.linear_1.in_features, dtype=tokens.dtype, device=tokens.device)
        temb = temb + emb.text_embedder(pooled).unsqueeze(1)  # (B, L, D): one conditioning per token
        return tokens.contiguous(), None, temb

    def rotate(self, x: torch.Tensor, rope) -> torch.Tensor:
        return x  # no rotary embedding (see the module docstring)

    def block(self, index: int, hidden: torch.Tensor, mask: torch.Tensor, rope, cond) -> torch.Tensor:
        blk = self.dit.transformer_blocks[index]
        mods = blk.norm1.linear(F.silu(cond)).chunk(9 if blk.use_dual_attention else 6, dim=-1)
        shift, scale, gate, m_shift, m_scale, m_gate = mods[:6]
        normed = blk.norm1.norm(hidden)
        out = hidden + gate * self._attention(blk.attn, normed * (1 + scale) + shift, mask)
        if blk.use_dual_attention:  # SD3.5: a second, image-only attention from the same input
            shift2, scale2, gate2 = mods[6:]
            out = out + gate2 * self._attention(blk.attn2, normed * (1 + scale2) + shift2, mask)
        x = blk.norm2(out) * (1 + m_scale) + m_shift
        return out + m_gate * blk.ff(x)

    @staticmethod
    def _attention(attn, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = (proj(x).unflatten(-1, (attn.heads, -1)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        out = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask)
        return attn.to_out[0](out.transpose(1, 2).flatten(2))

    def head(self, hidden: torch.Tensor, cond) -> torch.Tensor:
        norm = self.dit.norm_out
        scale, shift = norm.linear(F.silu(cond)).chunk(2, dim=-1)
        return self.dit.proj_out(norm.norm(hidden) * (1 + scale) + shift)

    # SD3's proj_out emits each token as (row, column, channel), Wan's layout with a temporal patch of 1.
    patchify = WanAdapter.patchify
    unpatchify = WanAdapter.unpatchify


class SD3VAE(LatentCodec):
    """diffusers' AutoencoderKL with SD3's latent shift and scale (16 channels, 8x spatial)."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae
        cfg = vae.config
        self.latent_channels = cfg.latent_channels
        self.spatial_factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.shift, self.scale = cfg.shift_factor or 0.0, cfg.scaling_factor

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        # The posterior mean: a deterministic target, as for the Wan VAE.
        with fp32_region(images.device):
            latents = self.vae.encode(images.to(self.vae.dtype)).latent_dist.mode()
        return ((latents.float() - self.shift) * self.scale).to(images.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        x = (latents.float() / self.scale + self.shift).to(self.vae.dtype)
        with fp32_region(latents.device):
            return self.vae.decode(x).sample.to(latents.dtype).clamp(-1, 1)


def build_sd3_vae(cfg: VAEConfig) -> SD3VAE:
    return SD3VAE(load_diffusers_model(AutoencoderKL, cfg))


def _text_stream(dit: SD3Transformer2DModel) -> list[torch.nn.Module]:
    """Modules that only ever see text tokens, which never enter the DiT here."""
    parts = [dit.context_embedder, dit.time_text_embed.text_embedder]
    for blk in dit.transformer_blocks:
        attn = blk.attn
        parts += [blk.norm1_context, attn.add_q_proj, attn.add_k_proj, attn.add_v_proj]
        parts += [m for m in (attn.to_add_out, attn.norm_added_q, attn.norm_added_k, blk.ff_context) if m is not None]
    return parts


def build_sd3(cfg: GenerationConfig, dtype: torch.dtype = torch.float32) -> SD3Adapter:
    """`dtype`: what a checkpoint is read in (the precision plan sets storage afterwards)."""
    if cfg.rope_theta is not None:
        raise ValueError(f"generation.rope_theta {cfg.rope_theta}: SD3 has no rotary embedding; remove the key")
    dit = load_diffusers_model(SD3Transformer2DModel, cfg, dtype)
    vae = VAE.get(cfg.vae.adapter)(cfg.vae)
    vae.requires_grad_(not cfg.vae.freeze)
    for module in _text_stream(dit):
        module.requires_grad_(False)
    if cfg.freeze:
        dit.requires_grad_(False)
    return SD3Adapter(dit, vae, cfg.num_train_timesteps)
