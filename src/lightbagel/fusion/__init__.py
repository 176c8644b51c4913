"""Fusion blocks and the masks and pairing rules they run under."""

from lightbagel.fusion.blocks import DoubleFusionBlock, StreamSpec
from lightbagel.fusion.mask import causal_mask, generalized_causal_mask
from lightbagel.fusion.none import NoFusionBlock
from lightbagel.fusion.pairing import vlm_depth_schedule

__all__ = [
    "DoubleFusionBlock", "NoFusionBlock", "StreamSpec", "causal_mask", "generalized_causal_mask", "vlm_depth_schedule",
]
