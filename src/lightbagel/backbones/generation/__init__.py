"""Generation adapters (DiT + VAE). Importing this package registers the built-in ones."""

from lightbagel.backbones.generation import sd3, vae, wan  # noqa: F401  (registers the adapters)
