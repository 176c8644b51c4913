"""Qwen2-VL adapter: the same block-by-block adapter as Qwen2.5-VL over transformers' Qwen2-VL.

Qwen2-VL and Qwen2.5-VL share the language model layout (M-RoPE, `model.language_model`), the
image placeholder tokens and `get_rope_index`; only the vision tower differs (no window
attention), so the processor and adapter are reused and only the model classes change.
"""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids

from lightbagel.backbones.cards import check_card_config, reads_checkpoint
from lightbagel.backbones.understanding.qwen2_5_vl import (
    _DTYPES,
    Qwen25VLAdapter,
    QwenProcessor,
    _image_processor,
    _tiny_tokenizer,
)
from lightbagel.recipe.schema import UnderstandingConfig
from lightbagel.registry import UNDERSTANDING


class Qwen2VLAdapter(Qwen25VLAdapter):
    """Qwen2-VL seen block by block; all but the ViT's index tensors is the Qwen2.5-VL adapter."""

    def host_vision_kwargs(self, grid: torch.Tensor, device: torch.device) -> dict:
        # No window attention in the Qwen2-VL ViT: positions and per-image lengths only.
        visual = self.model.model.visual
        return {"position_ids": get_vision_position_ids(grid, visual.spatial_merge_size).to(device),
                "cu_seqlens": get_vision_cu_seqlens(grid)}


def _from_config(cfg: UnderstandingConfig, tokenizer) -> Qwen2VLForConditionalGeneration:
    ids = tokenizer.convert_tokens_to_ids
    kwargs = dict(cfg.config)
    special = {"vocab_size": len(tokenizer), "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    kwargs["text_config"] = {**special, **kwargs.get("text_config", {})}
    # The tokenizer's ids win over a real card's (a weightless build speaks the shapes vocabulary).
    kwargs.update(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                  vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    config = Qwen2VLConfig(**kwargs)
    config._attn_implementation = cfg.attn_implementation
    return Qwen2VLForConditionalGeneration(config).to(_DTYPES[cfg.dtype])


def _from_pretrained(cfg: UnderstandingConfig) -> Qwen2VLForConditionalGeneration:
    # Safetensors only (no pickle), remote code only when the recipe asks for it.
    return Qwen2VLForConditionalGeneration.from_pretrained(
        cfg.pretrained, revision=cfg.revision or "main", dtype=_DTYPES[cfg.dtype], use_safetensors=True,
        attn_implementation=cfg.attn_implementation, trust_remote_code=cfg.trust_remote_code,
    )


@UNDERSTANDING.register("qwen2_vl")
def build_qwen2_vl(cfg: UnderstandingConfig) -> Qwen2VLAdapter:
    if not reads_checkpoint(cfg):
        # A real card built without its checkpoint has no tokenizer to read: use the built-in one.
        tokenizer = _tiny_tokenizer((cfg.tokenizer if cfg.pretrained is None else None) or "shapes")
        model = _from_config(cfg, tokenizer)
    else:
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.pretrained, revision=cfg.revision or "main",
                                                  trust_remote_code=cfg.trust_remote_code)
        model = _from_pretrained(cfg)
        check_card_config(dict(cfg.config), model.config.to_dict(), f"understanding card {cfg.card}")
    vision = model.config.vision_config
    processor = QwenProcessor(tokenizer, _image_processor(cfg, vision), vision.spatial_merge_size)
    adapter = Qwen2VLAdapter(model, processor)
    if cfg.freeze:
        adapter.requires_grad_(False)
    return adapter
