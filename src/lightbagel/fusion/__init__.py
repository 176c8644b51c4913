"""Fusion blocks and the masks and pairing rules they run under."""

from lightbagel.fusion.blocks import DoubleFusionBlock, StreamSpec
from lightbagel.fusion.mask import OrderMask, causal_order_mask
from lightbagel.fusion.none import NoFusionBlock
from lightbagel.fusion.pairing import vlm_depth_schedule

__all__ = ["DoubleFusionBlock", "NoFusionBlock", "OrderMask", "StreamSpec", "causal_order_mask", "vlm_depth_schedule"]
