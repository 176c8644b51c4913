"""Classifier-free guidance maths and BAGEL's per-task sampler defaults (docs/inference.md).

BAGEL combines its branches over packed DiT tokens (one row per patch token), so its "channel"
norms are per patch token, not per latent pixel; its "global" norm covers one image (BAGEL runs
one image per batch). Both are reproduced on (B, C, h, w) latents by viewing them as patches.
Source: https://github.com/ByteDance-Seed/Bagel (`modeling/bagel/bagel.py`, `_forward_flow`).
"""

from __future__ import annotations

import torch

# None: no renorm; "global": per image; "channel": per patch token, after both guidances;
# "text_channel": per patch token, after text guidance only (BAGEL's editing default).
RENORM = (None, "global", "channel", "text_channel")

# The sampler's defaults per task, held here once: the pipeline, lightbagel-generate / -edit /
# -eval (and their --help), the demo's sliders and the training grids all read them. Guidance is
# BAGEL's published settings (its app.py; the ImgEdit runner uses the same edit values). Steps:
# BAGEL's app uses 50; 30 is where the tiny default's scores stop moving (the scores in README.md
# and docs/tiny.md were measured at 30); pass --steps 50 for BAGEL's.
TASK_DEFAULTS = {
    "t2i": dict(steps=30, text_guidance=4.0, image_guidance=1.0, guidance_interval=(0.4, 1.0), renorm="global"),
    "edit": dict(steps=30, text_guidance=4.0, image_guidance=2.0, guidance_interval=(0.0, 1.0), renorm="text_channel"),
}


def guide(v: torch.Tensor, cfg, text: bool, image: bool, image_scale: torch.Tensor,
          patch: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """Combines branch velocities (cond, [no text], [no image]) into one, BAGEL's order.

    `v` is (branches, B, C, h, w); `patch` is the DiT's (height, width) patch in latent pixels.
    """
    cond, i = v[0], 1
    out = cond
    if text:
        out = v[i] + cfg.text_guidance * (cond - v[i])
        i += 1
        if cfg.renorm == "text_channel":
            out = renorm(out, cond, "channel", cfg.renorm_min, patch)
    if image:
        scale = image_scale.view(-1, 1, 1, 1)  # 1 for samples without a source image
        out = v[i] + scale * (out - v[i])
    if cfg.renorm in ("global", "channel"):
        out = renorm(out, cond, cfg.renorm, cfg.renorm_min, patch)
    return out


def renorm(guided: torch.Tensor, cond: torch.Tensor, mode: str, lower: float,
           patch: tuple[int, int]) -> torch.Tensor:
    """Rescales `guided` to at most `cond`'s norm (never below `lower` times it), per image
    (`global`) or per patch token (`channel`)."""
    tokens, as_tokens = _patch_view(guided, patch)
    ref, _ = _patch_view(cond, patch)
    dims = (1, 3, 5) if mode == "channel" else (1, 2, 3, 4, 5)
    norm = lambda x: torch.linalg.vector_norm(x, dim=dims, keepdim=True)  # noqa: E731
    ratio = norm(ref) / (norm(tokens) + 1e-8)
    return as_tokens(tokens * ratio.clamp(min=lower, max=1.0))


def _patch_view(x: torch.Tensor, patch: tuple[int, int]):
    """(B, C, h, w) -> (B, C, h/ph, ph, w/pw, pw), and the function that undoes it."""
    b, c, h, w = x.shape
    ph, pw = patch
    return x.reshape(b, c, h // ph, ph, w // pw, pw), lambda t: t.reshape(b, c, h, w)
