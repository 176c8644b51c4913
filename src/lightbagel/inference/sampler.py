"""Euler sampling of the flow-matching ODE with text and image classifier-free guidance.

Guidance follows BAGEL (docs/design.md): three branches per step, batched into one forward:
full condition, text dropped, and source image dropped (its ViT and clean VAE tokens), hidden
exactly as condition dropout hides them in training. Text guidance is applied first, image
guidance on top of it; both only inside `guidance_interval`, optionally renormalised. A scale
<= 1 turns its branch off, and without text guidance there is no image guidance (BAGEL's rule).

`steps` counts Euler updates (model evaluations) on `steps + 1` grid points from t = 1 to 0;
BAGEL's `num_timesteps` counts grid points (`linspace(1, 0, num_timesteps)`, its last point
never evaluated): BAGEL's 50 is `steps=49` here, on the same shifted grid (docs/inference.md).

The understanding side never sees the noise, so with `use_cache` it runs once (at the first
step, for every branch) and later steps run the generation side only (`LightBagel.
forward_generation`). The clean source slots never see the noise either: their K/V in every DiT
and fusion attention are kept from the first step, and later steps run the target slot alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from lightbagel.flow_matching import sampling_times
from lightbagel.inference.guidance import RENORM, TASK_DEFAULTS, guide
from lightbagel.inputs import EDIT_HIDES, TARGET_ORDER, TEXT, VIT, GenInputs, UndInputs, gen_inputs
from lightbagel.model import LightBagel, UndCache


@dataclass
class SamplerConfig:
    """Sampling settings; the defaults are BAGEL's text-to-image ones, except `image_guidance`
    (`guidance.TASK_DEFAULTS` holds both tasks' values; the pipeline picks per prompt)."""

    steps: int = TASK_DEFAULTS["t2i"]["steps"]
    shift: float = 3.0
    text_guidance: float = 4.0
    image_guidance: float = 1.5
    # Flow times t (1 = noise, 0 = data) with lo < t <= hi get guidance; elsewhere the plain
    # conditional velocity: guidance matters for layout (early), hurts fine detail (late).
    guidance_interval: tuple[float, float] = (0.4, 1.0)
    # Rescale the guided velocity to at most the conditional one's norm, never below `renorm_min`
    # times it: limits CFG oversaturation. Modes and per-task defaults: inference/guidance.py.
    renorm: Optional[str] = "global"
    renorm_min: float = 0.0
    use_cache: bool = True

    def __post_init__(self) -> None:
        scalars = {"shift": self.shift, "text_guidance": self.text_guidance, "image_guidance": self.image_guidance,
                   "renorm_min": self.renorm_min}
        for name, value in scalars.items():  # inf or nan guidance turns every image black
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")
        if self.text_guidance < 0 or self.image_guidance < 0:
            raise ValueError("guidance scales must be >= 0 (<= 1.0 turns guidance off)")
        lo, hi = self.guidance_interval
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"guidance_interval must satisfy 0 <= lo < hi <= 1, got {self.guidance_interval}")
        if self.renorm not in RENORM:
            raise ValueError(f"renorm must be one of {RENORM}, got {self.renorm!r}")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Conditioning:
    """What a batch of images is conditioned on: prompt tokens and clean source latents."""

    und: UndInputs
    sources: Optional[torch.Tensor] = None  # (B, K, C, h, w) clean latents, valid ones first
    source_valid: Optional[torch.Tensor] = None  # (B, K) bool
    source_order: Optional[torch.Tensor] = None  # (B, K) logical order of each clean VAE split

    @property
    def has_source(self) -> torch.Tensor:
        if self.source_valid is None:
            return torch.zeros(self.und.input_ids.shape[0], dtype=torch.bool, device=self.und.input_ids.device)
        return self.source_valid.any(dim=1)

    def gen(self, noisy: torch.Tensor, t: torch.Tensor) -> GenInputs:
        return condition_slots(noisy, t, self.sources, self.source_valid, self.source_order)


def condition_slots(noisy, t, sources=None, valid=None, orders=None) -> GenInputs:
    """Gen slots for K clean sources then the noisy target; K = 1 matches `gen_inputs` exactly.

    Sources sit on rotary frames 0..K-1 and the target on the frame after the valid ones, as in
    training, so a dropped source (image CFG) looks like text-to-image.
    """
    if sources is None or valid is None or not bool(valid.any()):
        return gen_inputs(noisy, t)
    if sources.shape[1] == 1:
        return gen_inputs(noisy, t, sources[:, 0], valid[:, 0], orders[:, 0])
    batch, k = valid.shape
    frames = torch.arange(k, device=noisy.device).expand(batch, k)
    target = torch.full((batch, 1), TARGET_ORDER, device=noisy.device, dtype=orders.dtype)
    return GenInputs(
        latents=torch.cat([sources.transpose(1, 2), noisy.unsqueeze(2)], dim=2),
        timesteps=torch.cat([torch.zeros_like(t)[:, None].expand(batch, k), t[:, None]], dim=1),
        frame_pos=torch.cat([frames, valid.sum(1, keepdim=True)], dim=1),
        valid=torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1),
        order=torch.cat([orders, target], dim=1),
    )


def without_text(und: UndInputs) -> UndInputs:
    """The text-unconditional branch: text tokens hidden exactly as text dropout hides them."""
    return _hide(und, TEXT)


def without_images(cond: Conditioning) -> Conditioning:
    """The image-unconditional branch: the sources' ViT tokens and clean VAE slots hidden."""
    valid = None if cond.source_valid is None else torch.zeros_like(cond.source_valid)
    return replace(cond, und=_hide(cond.und, VIT), source_valid=valid)


def restrict_edit(cond: Conditioning, edit_condition: str) -> Conditioning:
    """Hides the source encoder an `objective.edit_condition` ablation never trained with."""
    hides = EDIT_HIDES[edit_condition]
    if "vit" in hides:
        cond = replace(cond, und=_hide(cond.und, VIT))
    if "vae" in hides and cond.source_valid is not None:
        cond = replace(cond, source_valid=torch.zeros_like(cond.source_valid))
    return cond


def _hide(und: UndInputs, segment: int) -> UndInputs:
    keep = und.segment != segment
    return replace(und, keep=keep if und.keep is None else und.keep & keep)


def stack_branches(branches: Sequence[Conditioning]) -> Conditioning:
    """CFG branches of one batch as one batch (branch-major), so each step is one forward."""
    if len(branches) == 1:
        return branches[0]
    unds = [b.und for b in branches]
    keeps = [u.keep if u.keep is not None else torch.ones_like(u.segment, dtype=torch.bool) for u in unds]
    cat = lambda name: torch.cat([getattr(u, name) for u in unds])  # noqa: E731
    und = UndInputs(
        input_ids=cat("input_ids"), attention_mask=cat("attention_mask"),
        mm_token_type_ids=cat("mm_token_type_ids"), segment=cat("segment"), order=cat("order"),
        pixel_values=None if unds[0].pixel_values is None else cat("pixel_values"),
        image_grid_thw=None if unds[0].image_grid_thw is None else cat("image_grid_thw"),
        keep=torch.cat(keeps),
    )
    if branches[0].sources is None:
        return Conditioning(und)
    return Conditioning(und, *(torch.cat([getattr(b, n) for b in branches])
                               for n in ("sources", "source_valid", "source_order")))


def initial_noise(shape: tuple[int, ...], seeds: Sequence[int], device) -> torch.Tensor:
    """One CPU generator per image: an image depends on its seed only, not on its batch."""
    if len(seeds) != shape[0]:
        raise ValueError(f"need one seed per image: {len(seeds)} seeds for {shape[0]} images")
    noise = [torch.randn(shape[1:], generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(device)


class _Branches:
    """The batched CFG branches and how to get their velocities, with or without the cache."""

    def __init__(self, model: LightBagel, cond: Conditioning, cfg: SamplerConfig):
        self.model, self.batch = model, cond.und.input_ids.shape[0]
        branches = [cond]
        # BAGEL's rule (`_forward_flow`): a scale <= 1 turns its branch off, and image guidance only
        # ever applies on top of text guidance, so text_guidance <= 1 means no guidance at all.
        self.text = cfg.text_guidance > 1.0
        self.image = self.text and cfg.image_guidance > 1.0 and bool(cond.has_source.any())
        if self.text:
            branches.append(replace(cond, und=without_text(cond.und)))
        if self.image:
            branches.append(without_images(cond))
        self.cond, self.all = cond, stack_branches(branches)
        self.use_cache = cfg.use_cache and model.supports_cache
        self.cache: Optional[UndCache] = None
        self.views: dict[int, UndCache] = {}

    def velocities(self, x: torch.Tensor, t: torch.Tensor, guided: bool) -> torch.Tensor:
        """(n_branches or 1, B, C, h, w) velocities for the noisy target."""
        n = self.n_all if guided else 1
        x_all, t_all = x.repeat(n, 1, 1, 1), t.repeat(n)
        if not self.use_cache:
            cond = self.all if guided else self.cond
            out = self.model(cond.und, cond.gen(x_all, t_all)).velocity
        elif self.cache is None:  # first step: all branches, and the cache for later steps
            out, self.cache = self.model.forward_with_cache(self.all.und, self.all.gen(x.repeat(self.n_all, 1, 1, 1),
                                                                                     t.repeat(self.n_all)))
            out = out.velocity[: n * self.batch]
        else:
            gen = self._rows(n).gen(x_all, t_all)
            out = self.model.forward_generation(gen, self._cache_rows(n))
        return _target_latents(self.model, out, x).unflatten(0, (n, self.batch))

    def _cache_rows(self, n: int) -> UndCache:
        """The cache of the first n branches, kept with its masks for every later step."""
        if n not in self.views:
            self.views[n] = self.cache.rows(slice(0, n * self.batch))
        return self.views[n]

    @property
    def n_all(self) -> int:
        return 1 + self.text + self.image

    def _rows(self, n: int) -> Conditioning:
        return self.all if n == self.n_all else self.cond


def _target_latents(model: LightBagel, velocity: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    n_target = model.gen.tokens_per_slot(h, w)
    return model.gen.unpatchify(velocity[:, -n_target:], 1, h, w)[:, :, 0]


@torch.no_grad()
def sample(model: LightBagel, cond: Conditioning, shape: tuple[int, ...], cfg: SamplerConfig,
           seeds: Sequence[int], progress: bool = False) -> torch.Tensor:
    """Integrates from noise (t = 1) to data (t = 0); returns latents of `shape` (B, C, h, w)."""
    device = cond.und.input_ids.device
    x = initial_noise(shape, seeds, device)
    cond = restrict_edit(cond, getattr(model, "edit_condition", "both"))
    branches = _Branches(model, cond, cfg)
    image_scale = torch.where(cond.has_source, cfg.image_guidance, 1.0).to(x.dtype)
    times = sampling_times(cfg.steps, cfg.shift, device=device)
    lo, hi = cfg.guidance_interval
    patch = tuple(model.gen.patch_size[1:])
    for i in tqdm(range(cfg.steps), desc="sampling", disable=not progress, leave=False):
        t = times[i].expand(shape[0])
        guided = (branches.text or branches.image) and lo < float(times[i]) <= hi
        v = branches.velocities(x, t, guided)
        v = guide(v, cfg, branches.text, branches.image, image_scale, patch) if guided else v[0]
        x = x + (times[i + 1] - times[i]) * v
    return x


@torch.no_grad()
def sample_latents(model: LightBagel, und: UndInputs, shape: tuple[int, ...], steps: int = 20,
                   shift: float = 1.0, text_guidance: float = 1.0, source: Optional[torch.Tensor] = None,
                   source_valid: Optional[torch.Tensor] = None, source_order: Optional[torch.Tensor] = None,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Text-CFG sampling for training callbacks (one source slot per sample, guidance everywhere)."""
    seed = (int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
            if generator is not None else 0)
    cond = Conditioning(und)
    if source is not None:
        cond = Conditioning(und, source[:, None], source_valid[:, None], source_order[:, None])
    cfg = SamplerConfig(steps=steps, shift=shift, text_guidance=text_guidance, image_guidance=1.0,
                        guidance_interval=(0.0, 1.0))
    return sample(model, cond, shape, cfg, [seed + i for i in range(shape[0])])
