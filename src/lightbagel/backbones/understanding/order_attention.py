"""Lets a transformers VLM layer attend under an `OrderMask` (fusion/mask.py) instead of a dense mask.

transformers looks each layer's attention function up by `config._attn_implementation` in its
`AttentionInterface` (https://huggingface.co/docs/transformers/attention_interface). We register
`lightbagel_<impl>`: given an `OrderMask` it runs our flex / dense rule, with grouped K/V heads as
they are (no 7x copy); given anything else (HF `generate` in chat) it is `<impl>` unchanged, and
HF builds that mask as it would for `<impl>`.
"""

from __future__ import annotations

from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from lightbagel.fusion.mask import OrderMask

PREFIX = "lightbagel_"


def install_order_attention(config) -> None:
    """Routes `config`'s layers through the OrderMask-aware wrapper of their current implementation."""
    impl = config._attn_implementation or "sdpa"
    if impl.startswith(PREFIX):
        return
    name = PREFIX + impl
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _wrapper(impl))
        if impl in ALL_MASK_ATTENTION_FUNCTIONS:
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[impl])
    config._attn_implementation = name


def _wrapper(impl: str):
    def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
        if not isinstance(attention_mask, OrderMask):
            fallback = ALL_ATTENTION_FUNCTIONS[impl]
            return fallback(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        if dropout:
            raise ValueError("attention dropout is not supported under the fused model's order mask")
        gqa = query.shape[1] != key.shape[1]
        out = attention_mask.attend(query, key, value, scale=scaling, enable_gqa=gqa)
        return out.transpose(1, 2).contiguous(), None
    return attention
