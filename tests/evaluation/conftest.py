"""A tiny pipeline with non-zero fusion weights, and a saved export of it."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def tiny_pipe(tiny_recipe):
    from lightbagel.inference import LightBagelPipeline
    from lightbagel.model import build_model

    model = build_model(tiny_recipe.config).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.fusion.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return LightBagelPipeline(model, tiny_recipe.config)


@pytest.fixture
def tiny_export(tiny_pipe, tmp_path):
    path = tmp_path / "export"
    tiny_pipe.save_pretrained(path)
    return path
