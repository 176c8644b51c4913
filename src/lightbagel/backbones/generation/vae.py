"""Latent codecs: the Wan2.2 VAE and a lossless space-to-depth "pixel autoencoder" for tiny runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan

from lightbagel.backbones.generation.base import LatentCodec
from lightbagel.backbones.loading import load_diffusers_model
from lightbagel.precision import fp32_region
from lightbagel.recipe.schema import VAEConfig


class PixelAutoencoder(LatentCodec):
    """Space-to-depth: exact, parameter-free, and fast, so a tiny model can learn real images.

    32x32 RGB with factor 4 gives 48 x 8 x 8 latents: the Wan2.2 VAE's channel count.
    """

    def __init__(self, factor: int = 4, scale: float = 1.0):
        super().__init__()
        self.spatial_factor, self.scale = factor, scale
        self.latent_channels = 3 * factor * factor

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(images, self.spatial_factor) * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents / self.scale, self.spatial_factor)


class WanVAE(LatentCodec):
    """diffusers' AutoencoderKLWan on single frames, latents normalised by the config's mean/std."""

    # Measured on data, not architecture: a card's values replace the checkpoint's on load.
    _statistics_keys = ("latents_mean", "latents_std")

    def __init__(self, vae: AutoencoderKLWan):
        super().__init__()
        self.vae = vae
        cfg = vae.config
        self.latent_channels = cfg.z_dim
        self.spatial_factor = cfg.scale_factor_spatial
        self.register_buffer("mean", torch.tensor(cfg.latents_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.latents_std).view(1, -1, 1, 1), persistent=False)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        # The posterior mean: a deterministic target, as Wan's own image-conditioning does. Wan
        # runs its VAE in fp32 (precision.py), whatever autocast is on outside.
        with fp32_region(images.device):
            latents = self.vae.encode(images.unsqueeze(2).to(self.vae.dtype)).latent_dist.mode()[:, :, 0]
        return ((latents.float() - self.mean) / self.std).to(images.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        with fp32_region(latents.device):
            frames = self.vae.decode((latents.float() * self.std + self.mean).unsqueeze(2).to(self.vae.dtype)).sample
        return frames[:, :, 0].float().clamp(-1, 1)

    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with fp32_region(images.device):
            posterior = self.vae.encode(images.unsqueeze(2).to(self.vae.dtype)).latent_dist
            decoded = self.vae.decode(posterior.sample()).sample[:, :, 0].float()
            kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).float().mean()
        return decoded, kl, posterior.mean[:, :, 0].float()


def build_pixel_autoencoder(cfg: VAEConfig) -> PixelAutoencoder:
    return PixelAutoencoder(**dict(cfg.config))


def build_wan_vae(cfg: VAEConfig) -> WanVAE:
    return WanVAE(load_diffusers_model(AutoencoderKLWan, cfg, statistics=WanVAE._statistics_keys))
