"""`LightBagelPipeline`: text-to-image, instruction editing and image questions, diffusers-style.

    pipe = LightBagelPipeline.from_pretrained("outputs/tiny/export")
    images = pipe(["a red circle left of a blue square"], seed=0).images
    edited = pipe("make the circle green", images=[source]).images
    answer = pipe.understand("what color is the circle", images=[source])
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from omegaconf import OmegaConf
from PIL import Image

from lightbagel.backbones.understanding.base import EncodedPrompt
from lightbagel.data.buckets import ResolutionPolicy
from lightbagel.data.collate import image_to_tensor, tensor_to_image
from lightbagel.inference.guidance import TASK_DEFAULTS
from lightbagel.inference.sampler import Conditioning, SamplerConfig, sample
from lightbagel.model import LightBagel
from lightbagel.model_folder import RECIPE, export_model, load_exported, resolved_recipe, understanding_trained
from lightbagel.precision import apply_precision, dtype_named, inference_plan, precision_of
from lightbagel.recipe.schema import RecipeConfig

log = logging.getLogger(__name__)
RANDOM_VLM = ("this model's VLM ({card}) is random and was never trained, so its answers are noise; "
              "a model trained by recipes/tiny_pretrained.yaml (or with a pretrained VLM card) answers")

Sources = Union[None, Image.Image, Sequence[Image.Image]]


@dataclass
class Job:
    """One output image: prompt, sources' ViT and VAE copies, (width, height), task and sampler."""

    prompt: str
    vit: list[Image.Image]
    vae: list[Image.Image]
    size: tuple[int, int]
    task: str
    config: SamplerConfig


@dataclass
class PipelineOutput:
    images: list[Image.Image]
    settings: dict = field(default_factory=dict)  # everything needed to reproduce the images


class LightBagelPipeline:
    def __init__(self, model: LightBagel, recipe: RecipeConfig, device: str | torch.device = "cpu",
                 understanding_trained: Optional[bool] = None):
        self.model = model.to(device).eval()
        self.recipe, self.device = recipe, torch.device(device)
        # Whether the VLM ever learned anything (model_folder.py `understanding_trained`).
        self.understanding_trained = (not recipe.understanding_is_random() if understanding_trained is None
                                      else understanding_trained)
        self._warned = False

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu", dtype: Optional[str] = None,
                        trust_remote_code: bool = False):
        """Loads a `lightbagel-fit` export (model.safetensors + recipe.yaml).

        `dtype` (a precision.DTYPES name) is what every weight computes in, but the fp32 list of
        precision.py (VAE, rotary tables, timestep path); default: the training compute dtype.
        The folder's recipe may not turn on code loading; only `trust_remote_code=True` here may
        (model_folder.py).
        """
        directory = Path(directory)
        if not (directory / RECIPE).is_file():
            raise FileNotFoundError(f"{directory} holds no {RECIPE}; pass a lightbagel-fit export dir "
                                    f"(e.g. outputs/tiny/export)")
        recipe = resolved_recipe(directory / RECIPE)
        model = load_exported(directory, device=device, trust_remote_code=trust_remote_code)
        compute = dtype_named(dtype, "--dtype") if dtype is not None else precision_of(recipe.trainer).compute
        return cls(apply_precision(model, inference_plan(model, compute)), recipe, device,
                   understanding_trained(directory, recipe))

    def save_pretrained(self, directory: str | Path) -> Path:
        """Writes the same layout `from_pretrained` reads."""
        recipe_yaml = OmegaConf.to_yaml(OmegaConf.structured(self.recipe))
        return export_model(self.model, self.recipe, recipe_yaml, Path(directory))

    @property
    def image_size(self) -> int:
        return self.recipe.data.image_size

    @property
    def policy(self) -> ResolutionPolicy:
        """The recipe's training resolution rules, which size edit sources here too."""
        res = self.recipe.data.resolution
        return ResolutionPolicy(res, res.vae_multiple or self.model.gen.vae_multiple)

    def default_config(self, task: str = "t2i", **overrides) -> SamplerConfig:
        """BAGEL's sampler settings for `task` ("t2i" or "edit"; docs/inference.md), with the training shift."""
        return replace(SamplerConfig(shift=self.recipe.objective.timestep_shift, **TASK_DEFAULTS[task]), **overrides)

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], images: Sources | Sequence[Sources] = None,
                 height: Optional[int] = None, width: Optional[int] = None,
                 config: Union[None, SamplerConfig, dict] = None, seed: int | Sequence[int] = 0,
                 num_images_per_prompt: int = 1, progress: bool = False) -> PipelineOutput:
        """Text-to-image (no `images`) or editing (one or more source images per prompt).

        Size: `height` x `width` when given; else an edit follows its first source's bucket (the
        training rules, aspect kept) and text-to-image is the recipe's square `image_size`.
        `config`: one `SamplerConfig` for every image, or a dict of overrides on the per-task
        defaults (`default_config`); None: those defaults. One int `seed` gives image k the seed
        `seed + k`; or pass one seed per output image. Images of one size and task share a batch.
        """
        prompts, sources = _per_prompt(prompt, images)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        sources = [s for s in sources for _ in range(num_images_per_prompt)]
        seeds = [seed + k for k in range(len(prompts))] if isinstance(seed, int) else list(seed)
        if len(seeds) != len(prompts):
            raise ValueError(f"need one seed per image: {len(seeds)} seeds for {len(prompts)} images")
        jobs = [self.job(p, s, height, width, config) for p, s in zip(prompts, sources)]
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.size, job.task), []).append(i)
        out: list[Image.Image] = [None] * len(jobs)  # type: ignore[list-item]
        for rows in groups.values():
            made = self._generate([jobs[i] for i in rows], [seeds[i] for i in rows], progress)
            for i, image in zip(rows, made):
                out[i] = image
        settings = {"prompts": prompts, "seeds": seeds, "sizes": [list(j.size) for j in jobs],
                    "num_sources": [len(s) for s in sources],
                    "sampler": {j.task: j.config.to_dict() for j in jobs}}
        return PipelineOutput(out, settings)

    def job(self, prompt: str, sources: Sequence[Image.Image], height: Optional[int], width: Optional[int],
            config: Union[None, SamplerConfig, dict] = None) -> "Job":
        """One image to make: its prompt, its sources' ViT and VAE copies, its size and sampler."""
        task = "edit" if sources else "t2i"
        size = self._size(height, width, sources[0] if sources else None)
        pixels = [self.policy.source_pixels(image, size) for image in sources]
        if not isinstance(config, SamplerConfig):
            config = self.default_config(task, **(config or {}))
        return Job(prompt, [vit for vit, _ in pixels], [vae for _, vae in pixels], size, task, config)

    def _generate(self, jobs: Sequence["Job"], seeds: Sequence[int], progress: bool) -> list[Image.Image]:
        width, height = jobs[0].size
        factor = self.model.gen.vae.spatial_factor
        shape = (len(jobs), self.model.gen.vae.latent_channels, height // factor, width // factor)
        latents = sample(self.model, self.condition(jobs), shape, jobs[0].config, seeds, progress=progress)
        return [tensor_to_image(x) for x in self.model.gen.vae.decode(latents.to(self._dtype))]

    def condition(self, jobs: Sequence["Job"]) -> Conditioning:
        """Prompt tokens (sources' ViT copies, then the text) and clean source latents of one
        same-size batch; the VAE split's order comes from the prompt (`fusion.edit_layout`)."""
        proc = self.model.und.processor
        for i, job in enumerate(jobs, 1):
            proc.check_text(job.prompt, f"prompt {i}")
        encoded: list[EncodedPrompt] = [proc.prompt(j.prompt, j.vit) for j in jobs]
        und = proc.collate(encoded).to(self.device)
        k = max(len(j.vae) for j in jobs)
        if k == 0:
            return Conditioning(und)
        width, height = jobs[0].size
        pixels = torch.zeros(len(jobs), k, 3, height, width)
        valid = torch.zeros(len(jobs), k, dtype=torch.bool)
        order = torch.zeros(len(jobs), k, dtype=torch.long)
        for i, (job, enc) in enumerate(zip(jobs, encoded)):
            for j, image in enumerate(job.vae):
                pixels[i, j] = image_to_tensor(image)
                valid[i, j], order[i, j] = True, enc.vae_orders[j]
        latents = self.model.gen.vae.encode(pixels.flatten(0, 1).to(self.device, self._dtype))
        return Conditioning(und, latents.unflatten(0, (len(jobs), k)), valid.to(self.device), order.to(self.device))

    def understand(self, question: str, images: Sequence[Image.Image] = (), max_new_tokens: int = 32,
                   chat_template: bool = True) -> str:
        """Greedy answer from the VLM alone: understanding bypasses fusion (docs/design.md). Warns
        once when the VLM was never trained."""
        if not self.understanding_trained and not self._warned:
            log.warning(RANDOM_VLM.format(card=self.recipe.understanding.card))
            self._warned = True
        ids = self.answer_tokens(question, images, max_new_tokens, chat_template)
        return self.model.und.processor.tokenizer.decode(ids, skip_special_tokens=True).strip()

    @torch.no_grad()
    def answer_tokens(self, question: str, images: Sequence[Image.Image] = (), max_new_tokens: int = 32,
                      chat_template: bool = True) -> list[int]:
        """The answer's token ids (greedy; transformers' `generate` on the VLM), up to the end of
        the turn. With `chat_template` (and a tokenizer that has one) the question is a user turn."""
        proc = self.model.und.processor
        proc.check_text(question, "the question")
        vits = [self.policy.vit_pixels(image) for image in images]
        prompt = proc.chat(question, vits) if chat_template else proc.encode([*vits, question])
        und = proc.collate([prompt]).to(self.device)
        stops = proc.stop_token_ids
        images_in = dict(pixel_values=und.pixel_values, image_grid_thw=und.image_grid_thw)
        out = self.model.und.model.generate(
            input_ids=und.input_ids, attention_mask=und.attention_mask, mm_token_type_ids=und.mm_token_type_ids,
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops, pad_token_id=proc.pad_token_id,
            **{k: v for k, v in images_in.items() if v is not None},  # a text-only question has no pixels
        )
        ids = out[0, und.input_ids.shape[1]:].tolist()
        return ids[:-1] if ids and ids[-1] in stops else ids

    def _size(self, height: Optional[int], width: Optional[int], source: Optional[Image.Image]) -> tuple[int, int]:
        """(width, height) of an output image; an unset side follows the source's bucket."""
        bucket = self.policy.vae_size(source.size) if source is not None else (self.image_size, self.image_size)
        width, height = width or bucket[0], height or bucket[1]
        _, ph, pw = self.model.gen.patch_size
        step = self.model.gen.vae.spatial_factor * max(ph, pw)
        if height % step or width % step:
            raise ValueError(f"height and width must be multiples of {step} for this model, got {height}x{width}")
        return width, height

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.model.gen.parameters()).dtype


def _per_prompt(prompt, images) -> tuple[list[str], list[list[Image.Image]]]:
    """Normalises the (prompt, images) arguments to one list of sources per prompt."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("give at least one prompt")
    if images is None:
        return prompts, [[] for _ in prompts]
    if isinstance(images, Image.Image):
        images = [images]
    images = list(images)
    if all(isinstance(im, Image.Image) for im in images) and len(prompts) == 1:
        return prompts, [images]  # one prompt, several sources
    if len(images) != len(prompts):
        raise ValueError(f"images: give one entry per prompt ({len(prompts)}), got {len(images)}")
    as_list = lambda s: [] if s is None else [s] if isinstance(s, Image.Image) else list(s)  # noqa: E731
    return prompts, [as_list(s) for s in images]
