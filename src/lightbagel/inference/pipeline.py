"""`LightBagelPipeline`: text-to-image, instruction editing and image questions, diffusers-style.

    pipe = LightBagelPipeline.from_pretrained("outputs/tiny/export")
    images = pipe(["a red circle left of a blue square"], seed=0).images
    edited = pipe("make the circle green", images=[source]).images
    answer = pipe.understand("what color is the circle", images=[source])
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from omegaconf import OmegaConf
from PIL import Image

from lightbagel.backbones.understanding.base import EncodedPrompt
from lightbagel.data.collate import image_to_tensor, tensor_to_image
from lightbagel.inference.sampler import Conditioning, SamplerConfig, sample
from lightbagel.model import LightBagel
from lightbagel.recipe.schema import RecipeConfig
from lightbagel.training.export import RECIPE, export_model, load_exported, resolved_recipe

Sources = Union[None, Image.Image, Sequence[Image.Image]]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class PipelineOutput:
    images: list[Image.Image]
    settings: dict = field(default_factory=dict)  # everything needed to reproduce the images


class LightBagelPipeline:
    def __init__(self, model: LightBagel, recipe: RecipeConfig, device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.recipe, self.device = recipe, torch.device(device)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu", dtype: Optional[str] = None):
        """Loads a `lightbagel-fit` export (model.safetensors + recipe.yaml)."""
        directory = Path(directory)
        if not (directory / RECIPE).is_file():
            raise FileNotFoundError(f"{directory} holds no {RECIPE}; pass a lightbagel-fit export dir "
                                    f"(e.g. outputs/tiny/export)")
        model = load_exported(directory, device=device)
        if dtype is not None:
            model = model.to(_DTYPES[dtype])
        return cls(model, resolved_recipe(directory / RECIPE), device)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Writes the same layout `from_pretrained` reads."""
        recipe_yaml = OmegaConf.to_yaml(OmegaConf.structured(self.recipe))
        return export_model(self.model, self.recipe, recipe_yaml, Path(directory))

    @property
    def image_size(self) -> int:
        return self.recipe.data.image_size

    def default_config(self, **overrides) -> SamplerConfig:
        """DESIGN.md's sampler defaults, with the shift the model was trained at."""
        return replace(SamplerConfig(shift=self.recipe.objective.timestep_shift), **overrides)

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], images: Sources | Sequence[Sources] = None,
                 height: Optional[int] = None, width: Optional[int] = None,
                 config: Optional[SamplerConfig] = None, seed: int | Sequence[int] = 0,
                 num_images_per_prompt: int = 1, progress: bool = False) -> PipelineOutput:
        """Text-to-image (no `images`) or editing (one or more source images per prompt).

        One int `seed` gives image k the seed `seed + k`; or pass one seed per output image.
        """
        prompts, sources = _per_prompt(prompt, images)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        sources = [s for s in sources for _ in range(num_images_per_prompt)]
        seeds = [seed + k for k in range(len(prompts))] if isinstance(seed, int) else list(seed)
        height, width = self._size(height, width)
        cfg = config or self.default_config()
        cond = self.condition(prompts, sources, height, width)
        factor = self.model.gen.vae.spatial_factor
        shape = (len(prompts), self.model.gen.vae.latent_channels, height // factor, width // factor)
        latents = sample(self.model, cond, shape, cfg, seeds, progress=progress)
        decoded = self.model.gen.vae.decode(latents.to(self._dtype))
        settings = {"prompts": prompts, "seeds": seeds, "height": height, "width": width,
                    "num_sources": [len(s) for s in sources], **cfg.to_dict()}
        return PipelineOutput([tensor_to_image(x) for x in decoded], settings)

    def condition(self, prompts: Sequence[str], sources: Sequence[list[Image.Image]], height: int,
                  width: int) -> Conditioning:
        """BAGEL's layout per prompt: each source as ViT tokens (and a clean VAE slot), then text."""
        vit = self.recipe.data.vit_image_size
        proc = self.model.und.processor
        encoded: list[EncodedPrompt] = [
            proc.encode([*(s.convert("RGB").resize((vit, vit), Image.BICUBIC) for s in srcs), text])
            for text, srcs in zip(prompts, sources)
        ]
        und = proc.collate(encoded).to(self.device)
        k = max(len(s) for s in sources)
        if k == 0:
            return Conditioning(und)
        pixels = torch.zeros(len(prompts), k, 3, height, width)
        valid = torch.zeros(len(prompts), k, dtype=torch.bool)
        order = torch.zeros(len(prompts), k, dtype=torch.long)
        for i, (srcs, enc) in enumerate(zip(sources, encoded)):
            for j, image in enumerate(srcs):
                pixels[i, j] = image_to_tensor(image.convert("RGB").resize((width, height), Image.BICUBIC))
                valid[i, j], order[i, j] = True, enc.vae_orders[j]
        latents = self.model.gen.vae.encode(pixels.flatten(0, 1).to(self.device, self._dtype))
        return Conditioning(und, latents.unflatten(0, (len(prompts), k)), valid.to(self.device), order.to(self.device))

    def understand(self, question: str, images: Sequence[Image.Image] = (), max_new_tokens: int = 32,
                   chat_template: bool = True) -> str:
        """Greedy answer from the VLM alone: understanding bypasses fusion (DESIGN.md §1)."""
        ids = self.answer_tokens(question, images, max_new_tokens, chat_template)
        return self.model.und.processor.tokenizer.decode(ids, skip_special_tokens=True).strip()

    @torch.no_grad()
    def answer_tokens(self, question: str, images: Sequence[Image.Image] = (), max_new_tokens: int = 32,
                      chat_template: bool = True) -> list[int]:
        """The answer's token ids (greedy; transformers' `generate` on the VLM)."""
        vit = self.recipe.data.vit_image_size
        segments: list = ["<|im_start|>user\n"] if chat_template else []
        segments += [im.convert("RGB").resize((vit, vit), Image.BICUBIC) for im in images]
        segments.append(f"{question}<|im_end|>\n<|im_start|>assistant\n" if chat_template else question)
        proc = self.model.und.processor
        und = proc.collate([proc.encode(segments)]).to(self.device)
        out = self.model.und.model.generate(
            input_ids=und.input_ids, attention_mask=und.attention_mask, pixel_values=und.pixel_values,
            image_grid_thw=und.image_grid_thw, mm_token_type_ids=und.mm_token_type_ids,
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self._stop_ids(),
        )
        return out[0, und.input_ids.shape[1]:].tolist()

    def _stop_ids(self) -> list[int]:
        """An answer ends at the turn's end (what the understanding objective trains) or at eos."""
        tokenizer = self.model.und.processor.tokenizer
        ids = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id]
        return [i for i in dict.fromkeys(ids) if isinstance(i, int) and i != tokenizer.unk_token_id]

    def _size(self, height: Optional[int], width: Optional[int]) -> tuple[int, int]:
        height, width = height or self.image_size, width or self.image_size
        _, ph, pw = self.model.gen.patch_size
        step = self.model.gen.vae.spatial_factor * max(ph, pw)
        if height % step or width % step:
            raise ValueError(f"height and width must be multiples of {step} for this model, got {height}x{width}")
        return height, width

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
