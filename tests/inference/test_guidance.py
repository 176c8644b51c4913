"""CFG renorm against a re-typed copy of BAGEL's formula (modeling/bagel/bagel.py, `_forward_flow`).

BAGEL's velocities are packed patch tokens, (tokens, patch_dim) for one image; ours are latents
(B, C, h, w) that the DiT patchifies. `_packed` turns ours into BAGEL's layout for the reference.
"""

from __future__ import annotations

import pytest
import torch

from lightbagel.inference.guidance import TASK_DEFAULTS, guide
from lightbagel.inference.sampler import SamplerConfig

PATCH = (2, 2)


def _packed(x: torch.Tensor) -> torch.Tensor:
    """(1, C, h, w) -> (h/2 * w/2, C * 2 * 2): one row per patch token, BAGEL's layout."""
    c, h, w = x.shape[1:]
    return x[0].reshape(c, h // 2, 2, w // 2, 2).permute(1, 3, 0, 2, 4).reshape(-1, c * 4)


def _bagel(v_t, cfg_text_v_t, cfg_img_v_t, cfg_text_scale, cfg_img_scale, cfg_renorm_type, cfg_renorm_min):
    # Re-typed from BAGEL's `_forward_flow` (the CFG branch), on packed (tokens, patch_dim) tensors.
    if cfg_renorm_type == "text_channel":
        v_t_text_ = cfg_text_v_t + cfg_text_scale * (v_t - cfg_text_v_t)
        norm_v_t = torch.norm(v_t, dim=-1, keepdim=True)
        norm_v_t_text_ = torch.norm(v_t_text_, dim=-1, keepdim=True)
        scale = (norm_v_t / (norm_v_t_text_ + 1e-8)).clamp(min=cfg_renorm_min, max=1.0)
        v_t_text = v_t_text_ * scale
        if cfg_img_scale > 1.0:
            return cfg_img_v_t + cfg_img_scale * (v_t_text - cfg_img_v_t)
        return v_t_text
    v_t_text_ = cfg_text_v_t + cfg_text_scale * (v_t - cfg_text_v_t)
    v_t_ = cfg_img_v_t + cfg_img_scale * (v_t_text_ - cfg_img_v_t) if cfg_img_scale > 1.0 else v_t_text_
    if cfg_renorm_type == "global":
        norm_v_t, norm_v_t_ = torch.norm(v_t), torch.norm(v_t_)
    else:  # "channel"
        norm_v_t, norm_v_t_ = torch.norm(v_t, dim=-1, keepdim=True), torch.norm(v_t_, dim=-1, keepdim=True)
    scale = (norm_v_t / (norm_v_t_ + 1e-8)).clamp(min=cfg_renorm_min, max=1.0)
    return v_t_ * scale


@pytest.mark.parametrize("mode", ["text_channel", "global", "channel"])
@pytest.mark.parametrize("renorm_min", [0.0, 0.5])
def test_renorm_equals_bagels_formula(mode, renorm_min):
    g = torch.Generator().manual_seed(0)
    # The conditional branch much smaller than the others, so the clamp at 1 rarely hides a bug.
    v = torch.randn(3, 2, 6, 8, 10, generator=g) * torch.tensor([0.3, 1.0, 1.0]).view(3, 1, 1, 1, 1)
    cfg = SamplerConfig(text_guidance=4.0, image_guidance=2.0, renorm=mode, renorm_min=renorm_min)
    ours = guide(v, cfg, True, True, torch.full((2,), 2.0), PATCH)
    for b in range(2):
        ref = _bagel(*(_packed(v[k, b:b + 1]) for k in range(3)), 4.0, 2.0, mode, renorm_min)
        torch.testing.assert_close(_packed(ours[b:b + 1]), ref)
    plain = SamplerConfig(text_guidance=4.0, image_guidance=2.0, renorm=None)  # keywords: steps comes first
    assert not torch.allclose(ours, guide(v, plain, True, True, torch.full((2,), 2.0), PATCH))


def test_task_defaults_are_valid_and_differ_where_bagel_does():
    t2i, edit = (SamplerConfig(**TASK_DEFAULTS[k]) for k in ("t2i", "edit"))
    assert (t2i.renorm, edit.renorm) == ("global", "text_channel")
    assert (t2i.guidance_interval, edit.guidance_interval) == ((0.4, 1.0), (0.0, 1.0))
    # BAGEL's app.py: cfg_text_scale 4.0 for both tasks, cfg_img_scale 2.0 for editing (1.0: no image guidance).
    assert (t2i.text_guidance, t2i.image_guidance) == (4.0, 1.0)
    assert (edit.text_guidance, edit.image_guidance) == (4.0, 2.0)


@pytest.mark.parametrize("mode", ["global", "channel", "text_channel"])
def test_renorm_never_scales_a_guided_velocity_up(mode):
    """The ratio is clamped at 1: a guided velocity already smaller than the conditional one stays."""
    cond = torch.ones(1, 4, 4, 4)
    v = torch.stack([cond, 1.1 * cond])  # (cond, no text): text guidance 4 gives 0.7 * cond
    cfg = SamplerConfig(text_guidance=4.0, image_guidance=1.0, renorm=mode)
    torch.testing.assert_close(guide(v, cfg, True, False, torch.ones(1), PATCH), 0.7 * cond)


def test_image_guidance_alone_is_bagels_image_step():
    """Text guidance off (1.0), image guidance on: cfg_img_v_t + scale * (v_t - cfg_img_v_t)."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(2, 2, 6, 8, 10, generator=g)  # (cond, no image)
    cfg = SamplerConfig(text_guidance=1.0, image_guidance=2.0, renorm=None)
    scale = torch.tensor([2.0, 1.0])  # the second sample has no source image
    ours = guide(v, cfg, False, True, scale, PATCH)
    torch.testing.assert_close(ours[0], v[1, 0] + 2.0 * (v[0, 0] - v[1, 0]))
    torch.testing.assert_close(ours[1], v[0, 1])
