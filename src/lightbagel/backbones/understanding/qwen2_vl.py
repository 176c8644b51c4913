"""Qwen2-VL adapter: the same block-by-block adapter as Qwen2.5-VL over transformers' Qwen2-VL.

Qwen2-VL and Qwen2.5-VL share the language model layout (M-RoPE, `model.language_model`), the
image placeholder tokens and `get_rope_index`; only the vision tower differs (no window
attention), so the processor and adapter are reused and only the model classes change.
"""

from __future__ import annotations

import torch
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids

from lightbagel.backbones.understanding.qwen2_5_vl import Qwen25VLAdapter, QwenFamily, build_qwen
from lightbagel.recipe.schema import UnderstandingConfig


class Qwen2VLAdapter(Qwen25VLAdapter):
    """Qwen2-VL seen block by block; all but the ViT's index tensors is the Qwen2.5-VL adapter."""

    def host_vision_kwargs(self, grid: torch.Tensor, device: torch.device) -> dict:
        # No window attention in the Qwen2-VL ViT: positions and per-image lengths only.
        visual = self.model.model.visual
        return {"position_ids": get_vision_position_ids(grid, visual.spatial_merge_size).to(device),
                "cu_seqlens": get_vision_cu_seqlens(grid)}


def build_qwen2_vl(cfg: UnderstandingConfig, dtype: torch.dtype = torch.float32) -> Qwen2VLAdapter:
    return build_qwen(cfg, QwenFamily(Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLAdapter), dtype)
