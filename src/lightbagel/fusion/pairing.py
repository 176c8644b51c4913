"""Which VLM depth each fusion block sees (docs/design.md and the paper's depth ablation)."""

from __future__ import annotations


def vlm_depth_schedule(num_fusion: int, num_vlm: int, depth_offset: float) -> list[int]:
    """Number of VLM blocks run before fusion block i, for every i.

    `depth_offset` 0.0 pairs DiT block i with VLM block i ("0% depth", the paper); once the VLM
    runs out, its last output is reused. 1.0 runs the whole VLM first, so every fusion block sees
    its final output ("100% depth", MetaQuery-style); 0.5 starts fusion half-way up the VLM.
    """
    if not 0.0 <= depth_offset <= 1.0:
        raise ValueError(f"depth_offset must be in [0, 1], got {depth_offset}")
    start = round(depth_offset * num_vlm)
    return [min(num_vlm, start + i + 1) for i in range(num_fusion)]
