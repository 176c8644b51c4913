"""lightbagel: unified multimodal models from a VLM and a DiT fused at every depth."""

__version__ = "0.1.0"
