"""Samples (text + PIL images) -> a padded training batch for the fused model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from lightbagel.backbones.understanding.base import UndProcessor
from lightbagel.data.chat import ChatBatch, collate_chat
from lightbagel.inputs import UndInputs


@dataclass
class TrainBatch:
    und: UndInputs
    target: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    source: torch.Tensor  # (B, 3, H, W) in [-1, 1]; zeros where a sample has no source image
    has_source: torch.Tensor  # (B,) bool
    source_order: torch.Tensor  # (B,) logical order of the source's clean VAE split
    texts: list[str]
    # Set by the mixture pipeline: the producing worker's resumable state and skip counts.
    data_state: Optional[dict] = None

    def __len__(self) -> int:
        return self.target.shape[0]


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def tensor_to_image(x: torch.Tensor) -> Image.Image:
    array = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def prompt_segments(text: str, source: Image.Image | None, vit_size: Union[int, tuple[int, int]]) -> list:
    """BAGEL's editing layout: the source as ViT tokens first, then the instruction.

    ``vit_size`` is a square side or a (width, height) kept from the image's aspect ratio.
    """
    if source is None:
        return [text]
    size = (vit_size, vit_size) if isinstance(vit_size, int) else tuple(vit_size)
    return [source if source.size == size else source.resize(size, Image.BICUBIC), text]


class Collator:
    """Picklable collate_fn: runs in DataLoader workers with the adapter's CPU-side processor."""

    def __init__(self, processor: UndProcessor, vit_size: int):
        self.processor, self.vit_size = processor, vit_size

    def __call__(self, samples: Sequence[dict]) -> Union[TrainBatch, ChatBatch]:
        if samples and samples[0].get("task") == "und":  # the pipeline never mixes und with others
            return collate_chat(self.processor, samples)
        prompts = [self.processor.encode(prompt_segments(s["text"], s["source"], s.get("vit_size", self.vit_size)))
                   for s in samples]
        targets = torch.stack([image_to_tensor(s["target"]) for s in samples])
        sources = torch.stack([
            image_to_tensor(s["source"]) if s["source"] is not None else torch.zeros_like(targets[0])
            for s in samples
        ])
        return TrainBatch(
            und=self.processor.collate(prompts),
            target=targets,
            source=sources,
            has_source=torch.tensor([s["source"] is not None for s in samples]),
            source_order=torch.tensor([p.vae_orders[0] if p.vae_orders else 0 for p in prompts]),
            texts=[s["text"] for s in samples],
        )
