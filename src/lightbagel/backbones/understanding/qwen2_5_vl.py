"""Qwen2.5-VL (and Qwen2-VL-style) adapter: transformers' model run block by block.

The same class serves the 7B card (weights from a hub id or local directory) and the tiny card
(random weights from a config), so the tiny tests exercise the real code path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import rotate_half
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

from lightbagel.backbones.loading import check_card_config, reads_checkpoint, resolve_pretrained
from lightbagel.backbones.understanding.base import (
    EncodedPrompt,
    Segment,
    UnderstandingAdapter,
    UndProcessor,
)
from lightbagel.backbones.understanding.order_attention import install_order_attention
from lightbagel.inputs import TEXT, VIT, UndInputs
from lightbagel.recipe.schema import UnderstandingConfig


class QwenProcessor(UndProcessor):
    """Tokenizer + image processor; expands each image into its ViT placeholder tokens."""

    def __init__(self, tokenizer, image_processor, merge_size: int):
        self.tokenizer, self.image_processor, self.merge_size = tokenizer, image_processor, merge_size
        ids = tokenizer.convert_tokens_to_ids
        self.image_token_id = ids("<|image_pad|>")
        self.vision_start_id, self.vision_end_id = ids("<|vision_start|>"), ids("<|vision_end|>")
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else ids("<|endoftext|>")

    def encode(self, segments: Sequence[Segment]) -> EncodedPrompt:
        out = EncodedPrompt([], [], [], [])
        for seg in segments:
            if isinstance(seg, str):
                self._add_text(out, seg)
            else:
                self._add_image(out, seg)
        return out

    def _add_text(self, out: EncodedPrompt, text: str) -> None:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        n = len(ids)
        out.input_ids += ids
        out.mm_token_type_ids += [0] * n
        out.segment += [TEXT] * n
        out.order += list(range(out.next_order, out.next_order + n))
        out.next_order += n

    def _add_image(self, out: EncodedPrompt, image) -> None:
        feats = self.image_processor(images=[image.convert("RGB")], return_tensors="pt")
        grid = feats["image_grid_thw"][0]
        n = int(grid.prod()) // self.merge_size**2
        vit_order, vae_order = self.image_orders(out)
        # [vision_start, image, vision_end] is one bidirectional split, as in BAGEL.
        out.input_ids += [self.vision_start_id] + [self.image_token_id] * n + [self.vision_end_id]
        out.mm_token_type_ids += [0] + [1] * n + [0]
        out.segment += [VIT] * (n + 2)
        out.order += [vit_order] * (n + 2)
        out.pixel_values.append(feats["pixel_values"])
        out.image_grid_thw.append(grid)
        out.vae_orders.append(vae_order)


class Qwen25VLAdapter(UnderstandingAdapter):
    # Rotary inv_freq of the LLM (M-RoPE) and of the ViT: in bf16 the phase is off by up to
    # ~0.7 rad at distance 600, and the frozen VLM no longer computes the original model.
    keep_in_fp32 = ("rotary",)
    blocks, block_called = "model.model.language_model.layers", True

    def __init__(self, model: Qwen2_5_VLForConditionalGeneration, processor: QwenProcessor):
        super().__init__()
        self.model = model
        self.processor = processor
        text = model.config.text_config
        self.num_layers = text.num_hidden_layers
        self.hidden_size = text.hidden_size
        self.num_heads = text.num_attention_heads
        self.head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        install_order_attention(text)  # the fused model's masks reach the layers as `OrderMask`s

    @property
    def _lm(self):
        return self.model.model.language_model

    def embed(self, und: UndInputs) -> tuple[torch.Tensor, tuple]:
        """Index tensors (ids, grids, masks) may stay on the host while the weights live elsewhere,
        e.g. on the meta device: the data-dependent index maths (`.tolist()`) then runs on the host
        and only its results move to the weights' device."""
        vlm = self.model.model
        embed_tokens = vlm.get_input_embeddings()
        device = embed_tokens.weight.device
        ids = und.input_ids.to(device)
        hidden = embed_tokens(ids)
        if und.pixel_values is not None:
            grid = und.image_grid_thw
            host = self.host_vision_kwargs(grid, device) if grid.device != device else {}
            feats = vlm.get_image_features(und.pixel_values.to(device), grid, return_dict=True, **host)
            feats = torch.cat(feats.pooler_output).to(hidden.dtype)
            slots = (ids == vlm.config.image_token_id).unsqueeze(-1)
            hidden = hidden.masked_scatter(slots, feats)
            positions, _ = vlm.get_rope_index(
                und.input_ids, und.mm_token_type_ids, image_grid_thw=grid, attention_mask=und.attention_mask,
            )
        else:
            positions = (und.attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return hidden, self._lm.rotary_emb(hidden, positions.to(device))

    def host_vision_kwargs(self, grid: torch.Tensor, device: torch.device) -> dict:
        """The ViT's index tensors precomputed from a host-side grid (a family hook: Qwen2-VL differs)."""
        return _host_vision_kwargs(self.model.model.visual, grid, device)

    def block(self, index: int, hidden: torch.Tensor, mask: torch.Tensor, rope) -> torch.Tensor:
        return self._lm.layers[index](hidden, attention_mask=mask, position_embeddings=rope)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(self._lm.norm(hidden))

    def rotate(self, x: torch.Tensor, rope) -> torch.Tensor:
        cos, sin = (r.unsqueeze(2).to(x.dtype) for r in rope)
        return x * cos + rotate_half(x) * sin


def _host_vision_kwargs(visual, grid: torch.Tensor, device: torch.device) -> dict:
    """The ViT's grid-derived index tensors computed from a host-side grid (transformers accepts
    them precomputed); lengths stay on the host for the `.tolist()` that splits attention."""
    position_ids = get_vision_position_ids(grid, visual.spatial_merge_size)
    cu_seqlens = get_vision_cu_seqlens(grid)
    window_index, cu_window_seqlens = get_vision_window_index(
        grid, spatial_merge_size=visual.spatial_merge_size, window_size=visual.window_size,
        patch_size=visual.patch_size,
    )
    return {"position_ids": position_ids.to(device), "window_index": window_index.to(device),
            "cu_seqlens": cu_seqlens, "cu_window_seqlens": cu_window_seqlens}


def _tiny_tokenizer(name: str):
    if name != "shapes":
        raise ValueError(f"unknown built-in tokenizer {name!r}; allowed: shapes")
    from lightbagel.shapes.tokenizer import build_shapes_tokenizer

    return build_shapes_tokenizer()


def _from_config(cfg: UnderstandingConfig, tokenizer, family: "QwenFamily"):
    ids = tokenizer.convert_tokens_to_ids
    kwargs = dict(cfg.config)
    kwargs.setdefault("text_config", {})
    special = {"vocab_size": len(tokenizer), "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    kwargs["text_config"] = {**special, **kwargs["text_config"]}
    # The tokenizer's ids win over a real card's (a weightless build speaks the shapes vocabulary).
    kwargs.update(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                  vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    config = family.config_cls(**kwargs)
    config._attn_implementation = cfg.attn_implementation
    # Built in fp32: the precision plan casts it later, never rounding the rotary frequencies.
    return family.model_cls(config)


def _from_pretrained(cfg: UnderstandingConfig, family: "QwenFamily", dtype: torch.dtype):
    # Safetensors only (no pickle), remote code only when the recipe asks for it. transformers
    # computes inv_freq in fp32 whatever `dtype` the weights are read in.
    return family.model_cls.from_pretrained(
        resolve_pretrained(cfg.pretrained), revision=cfg.revision or "main", dtype=dtype, use_safetensors=True,
        attn_implementation=cfg.attn_implementation, trust_remote_code=cfg.trust_remote_code,
    )


def _image_processor(cfg: UnderstandingConfig, vision) -> Qwen2VLImageProcessorPil:
    size = {"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels}
    if not reads_checkpoint(cfg):
        return Qwen2VLImageProcessorPil(
            patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
            temporal_patch_size=vision.temporal_patch_size, size=size,
        )
    # trust_remote_code given explicitly: left unset, transformers may ask on a terminal instead.
    processor = AutoImageProcessor.from_pretrained(resolve_pretrained(cfg.pretrained), revision=cfg.revision or "main",
                                                   use_fast=False, trust_remote_code=cfg.trust_remote_code)
    processor.size = size
    return processor


@dataclass(frozen=True)
class QwenFamily:
    """The transformers classes of one Qwen-VL generation; everything else is shared."""

    config_cls: type
    model_cls: type
    adapter_cls: type


def build_qwen(cfg: UnderstandingConfig, family: QwenFamily, dtype: torch.dtype = torch.float32) -> Qwen25VLAdapter:
    """`dtype`: what a checkpoint is read in (the precision plan sets storage afterwards)."""
    if not reads_checkpoint(cfg):
        # A real card built without its checkpoint has no tokenizer to read: use the built-in one.
        tokenizer = _tiny_tokenizer((cfg.tokenizer if cfg.pretrained is None else None) or "shapes")
        model = _from_config(cfg, tokenizer, family)
    else:
        tokenizer_src = cfg.tokenizer or cfg.pretrained
        tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(tokenizer_src), revision=cfg.revision or "main",
                                                  trust_remote_code=cfg.trust_remote_code)
        model = _from_pretrained(cfg, family, dtype)
        check_card_config(dict(cfg.config), model.config.to_dict(), f"understanding card {cfg.card}")
    vision = model.config.vision_config
    processor = QwenProcessor(tokenizer, _image_processor(cfg, vision), vision.spatial_merge_size)
    processor.max_tokens = min(model.config.text_config.max_position_embeddings, tokenizer.model_max_length)
    adapter = family.adapter_cls(model, processor)
    if cfg.freeze:
        adapter.requires_grad_(False)
    return adapter


QWEN2_5_VL = QwenFamily(Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen25VLAdapter)


def build_qwen2_5_vl(cfg: UnderstandingConfig, dtype: torch.dtype = torch.float32) -> Qwen25VLAdapter:
    return build_qwen(cfg, QWEN2_5_VL, dtype)
