"""Distribution metrics through torchmetrics, with feature models the user supplies.

FID takes any `nn.Module` mapping float images in [0, 1], (N, 3, H, W), to (N, F) features
(torchmetrics' default InceptionV3 would need torch-fidelity and a download). CLIP score takes
a local CLIP directory (transformers `CLIPModel` + `CLIPProcessor`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn


def images_to_batch(images: Sequence[Image.Image], size: int | None = None) -> torch.Tensor:
    """PIL images -> float (N, 3, H, W) in [0, 1], resized to one size."""
    size = size or images[0].size[0]
    arrays = [np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0


def load_feature_model(spec: str) -> nn.Module:
    """`package.module:factory` -> the module the factory returns (called without arguments)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise ValueError(f"feature model {spec!r}: expected 'package.module:factory'")
    factory = getattr(importlib.import_module(module_name), attr)
    model = factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"{spec} returned {type(model).__name__}, expected a torch nn.Module")
    return model.eval()


def fid(real: Sequence[Image.Image], fake: Sequence[Image.Image], feature: nn.Module,
        size: int | None = None, batch_size: int = 64) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID needs at least 2 real and 2 generated images, got {len(real)} and {len(fake)}")
    size = size or real[0].size[0]
    metric = FrechetInceptionDistance(feature=feature, normalize=True, input_img_size=(3, size, size))
    with torch.no_grad():
        for images, is_real in ((real, True), (fake, False)):
            for i in range(0, len(images), batch_size):
                metric.update(images_to_batch(images[i:i + batch_size], size), real=is_real)
        return float(metric.compute())


def clip_score(images: Sequence[Image.Image], prompts: Sequence[str], clip_dir: str | Path,
               batch_size: int = 32) -> float:
    """torchmetrics CLIPScore (100 x cosine, floored at 0) with a CLIP model from a local dir."""
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    if len(images) != len(prompts):
        raise ValueError(f"one prompt per image: {len(images)} images, {len(prompts)} prompts")
    metric = CLIPScore(model_name_or_path=lambda: (CLIPModel.from_pretrained(str(clip_dir)),
                                                   CLIPProcessor.from_pretrained(str(clip_dir))))
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            batch = (images_to_batch(images[i:i + batch_size]) * 255).to(torch.uint8)
            metric.update(list(batch), list(prompts[i:i + batch_size]))
        return float(metric.compute())
