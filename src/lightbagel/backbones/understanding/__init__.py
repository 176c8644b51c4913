"""Understanding adapters (VLMs). Importing this package registers the built-in ones."""

from lightbagel.backbones.understanding import qwen2_5_vl, qwen2_vl  # noqa: F401  (registers the adapters)
