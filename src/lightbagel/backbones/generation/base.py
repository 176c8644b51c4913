"""What the fused model needs from a diffusion transformer and its VAE (the generation pathway)."""

from __future__ import annotations

import torch
from torch import nn

from lightbagel.inputs import GenInputs


class LatentCodec(nn.Module):
    """Images in [-1, 1] <-> normalised latents. Frozen in every recipe so far."""

    latent_channels: int
    spatial_factor: int
    # Name patterns (re.search) of the weights kept in fp32 (precision.py), as diffusers'
    # `_keep_in_fp32_modules`. VAEs run in fp32 (Wan's pipeline does), latent mean/std included:
    # the empty pattern matches every name.
    keep_in_fp32: tuple[str, ...] = ("",)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, C, H / f, W / f)."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The VAE objective's view (objective.vae_weight): images decoded from a posterior sample,
        the KL of the posterior to N(0, 1) as a mean per latent value, and the raw (unnormalised)
        posterior mean (N, C, h, w). A codec with nothing to learn has no such view."""
        raise NotImplementedError(f"{type(self).__name__} has no posterior to train")


class GenerationAdapter(nn.Module):
    """A DiT seen block by block, plus its codec.

    Subclasses set `num_layers`, `hidden_size`, `num_heads`, `head_dim`, `vae` and `patch_size`,
    and declare the facts precision.py and training/sharding.py read: `keep_in_fp32`, `blocks`
    and `block_called`.
    """

    num_layers: int
    hidden_size: int
    num_heads: int
    head_dim: int
    patch_size: tuple[int, int, int]
    vae: LatentCodec
    keep_in_fp32: tuple[str, ...]  # name patterns (re.search) inside `dit` kept in fp32; () for none
    blocks: str  # dotted path from the adapter to its block list, one FSDP2 unit per block
    # Whether `block(i)` calls `blocks[i](...)` (module hooks then see each block); otherwise
    # training/sharding.py routes the block's own method through FSDP2.
    block_called: bool

    @property
    def vae_multiple(self) -> int:
        """Pixels per DiT token side: the VAE's factor times the DiT's patch."""
        return self.vae.spatial_factor * self.patch_size[1]

    def _bind(self, dit: nn.Module, vae: LatentCodec, num_train_timesteps: int,
              patch_size: tuple[int, int, int]) -> None:
        """The geometry every diffusers DiT config spells the same way."""
        self.dit, self.vae = dit, vae
        cfg = dit.config
        self.num_layers = cfg.num_layers
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.attention_head_dim
        self.hidden_size = self.num_heads * self.head_dim
        self.patch_size = patch_size
        self.num_train_timesteps = num_train_timesteps

    def embed(self, gen: GenInputs) -> tuple[torch.Tensor, object, object]:
        """Latents -> tokens (B, L, D), rotary embedding, and per-token timestep conditioning."""
        raise NotImplementedError

    def block(self, index: int, hidden: torch.Tensor, mask: torch.Tensor, rope, cond) -> torch.Tensor:
        raise NotImplementedError

    def head(self, hidden: torch.Tensor, cond) -> torch.Tensor:
        """Tokens -> per-token velocity prediction in `patchify` layout (B, L, p * C)."""
        raise NotImplementedError

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, S, h, w) -> (B, L, p * C) in the token order and layout of `head`."""
        raise NotImplementedError

    def unpatchify(self, tokens: torch.Tensor, slots: int, height: int, width: int) -> torch.Tensor:
        raise NotImplementedError

    def tokens_per_slot(self, height: int, width: int) -> int:
        _, ph, pw = self.patch_size
        return (height // ph) * (width // pw)

    def rotate(self, x: torch.Tensor, rope) -> torch.Tensor:
        raise NotImplementedError
