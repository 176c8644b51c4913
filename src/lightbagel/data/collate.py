"""Samples (text + PIL images) -> a padded training batch for the fused model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from lightbagel.backbones.understanding.base import UndProcessor
from lightbagel.data.buckets import resized
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


@dataclass
class MixedBatch:
    """A batch of several target sizes (a packed row, data.packing.layout packed): one `TrainBatch`
    per size, in the order each size first came; the model runs them as one row (packing.py)."""

    groups: list[TrainBatch]
    data_state: Optional[dict] = None

    def __len__(self) -> int:
        return sum(len(g) for g in self.groups)

    @property
    def texts(self) -> list[str]:
        return [text for g in self.groups for text in g.texts]


def size_groups(batch: Union[TrainBatch, MixedBatch]) -> list[TrainBatch]:
    """The one-size parts of an image batch."""
    return batch.groups if isinstance(batch, MixedBatch) else [batch]


def by_target_size(items: Sequence, sample=lambda item: item) -> dict:
    """Items grouped by their sample's target size, sizes in the order they first come."""
    groups: dict = {}
    for item in items:
        target = sample(item).get("target")
        groups.setdefault(None if target is None else target.size, []).append(item)
    return groups


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def tensor_to_image(x: torch.Tensor) -> Image.Image:
    array = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


class Collator:
    """Picklable collate_fn: runs in DataLoader workers with the adapter's CPU-side processor."""

    def __init__(self, processor: UndProcessor, vit_size: int):
        self.processor, self.vit_size = processor, vit_size

    def _vit_sources(self, sample: dict) -> list[Image.Image]:
        """The mixture pipeline sizes the ViT copy (`ResolutionPolicy.source_pixels`); other callers
        (validation samples) give square sources, shown to the ViT at `vit_size`."""
        if sample["source"] is None:
            return []
        if "vit_source" in sample:
            return [sample["vit_source"]]
        return [resized(sample["source"], (self.vit_size, self.vit_size))]

    def __call__(self, samples: Sequence[dict]) -> Union[TrainBatch, MixedBatch, ChatBatch]:
        if samples and samples[0].get("task") == "und":  # the pipeline never mixes und with others
            return collate_chat(self.processor, samples)
        groups = [self._collate(group) for group in by_target_size(samples).values()]
        return groups[0] if len(groups) == 1 else MixedBatch(groups)

    def _collate(self, samples: Sequence[dict]) -> TrainBatch:
        """Samples of one target size -> one padded batch."""
        prompts = [self.processor.prompt(s["text"], self._vit_sources(s)) for s in samples]
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
