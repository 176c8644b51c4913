"""Editing sees at inference the inputs it was trained on: for a non-square source the pipeline
feeds the model the very ViT and VAE tensors the training DataModule makes from that image."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from lightbagel.data.datamodule import MixtureDataModule
from lightbagel.data.images import to_rgb
from lightbagel.inference import LightBagelPipeline, SamplerConfig
from lightbagel.model import build_model
from lightbagel.recipe.schema import PackingConfig, SourceConfig

INSTRUCTION = "make the circle green"


def _noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    """Pixel noise, so that any other crop or resampling gives other tensors."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def edit_case(tiny_recipe, tmp_path):
    """A pipeline and the first training batch of a one-sample edit source (a 48 x 24 source)."""
    source = _noise_image((48, 24), 0)
    with wds.TarWriter(str(tmp_path / "edit-0000.tar")) as writer:
        writer.write({"__key__": "e0", "task.txt": "edit", "instruction.txt": INSTRUCTION,
                      "source.png": _png(source), "target.png": _png(_noise_image((48, 24), 1))})
    recipe = tiny_recipe.config
    model = build_model(recipe).eval()
    data_cfg = replace(recipe.data, source="webdataset", batch_size=1, num_workers=0, packing=PackingConfig(),
                       sources=[SourceConfig(name="edits", urls=[str(tmp_path / "edit-0000.tar")], task="edit")])
    data = MixtureDataModule(data_cfg, model.und.processor, tmp_path, vae_multiple=model.gen.vae_multiple)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    return LightBagelPipeline(model, recipe), batch, Image.open(io.BytesIO(_png(source)))


def test_pipeline_feeds_the_model_the_training_tensors(edit_case, monkeypatch):
    pipe, batch, source = edit_case
    fed = {}
    encode, condition = pipe.model.gen.vae.encode, pipe.condition
    monkeypatch.setattr(pipe.model.gen.vae, "encode", lambda x: (fed.setdefault("vae", x.clone()), encode(x))[1])
    monkeypatch.setattr(pipe, "condition", lambda jobs: fed.setdefault("cond", condition(jobs)))
    out = pipe(INSTRUCTION, images=source, config=SamplerConfig(steps=1, shift=1.0), seed=0)
    und = fed["cond"].und
    assert batch.und.pixel_values.shape[0] > 0
    torch.testing.assert_close(und.pixel_values, batch.und.pixel_values, rtol=0, atol=0)  # ViT pixels
    torch.testing.assert_close(und.image_grid_thw, batch.und.image_grid_thw, rtol=0, atol=0)
    assert und.input_ids.tolist() == batch.und.input_ids.tolist()
    torch.testing.assert_close(fed["vae"], batch.source, rtol=0, atol=0)  # VAE pixels
    # The output keeps the source's aspect (2:1), bucketed by the training rules.
    assert out.images[0].size == tuple(batch.source.shape[-1:-3:-1]) == (32, 16)
    grid = und.image_grid_thw[0].tolist()
    assert grid[2] == 2 * grid[1]  # the ViT copy is not squared either


def test_a_set_size_wins_over_the_source_bucket(edit_case):
    pipe, _, source = edit_case
    out = pipe(INSTRUCTION, images=source, height=32, width=32, config=SamplerConfig(steps=1, shift=1.0))
    assert out.images[0].size == (32, 32)


def test_a_chat_image_is_decoded_like_a_training_one(edit_case, monkeypatch):
    pipe, _, _ = edit_case
    pixels = np.asarray(_noise_image((40, 24), 2))
    alpha = np.random.default_rng(3).integers(0, 256, (24, 40, 1), dtype=np.uint8)
    transparent = Image.fromarray(np.concatenate([pixels, alpha], axis=-1), mode="RGBA")
    seen = []
    processor = pipe.model.und.processor
    chat = processor.chat
    monkeypatch.setattr(processor, "chat", lambda q, images: (seen.append(images), chat(q, images))[1])
    pipe.answer_tokens("what colour is it?", images=[transparent], max_new_tokens=1)
    composite = to_rgb(transparent)
    (vit,) = seen[0]
    assert vit.mode == "RGB" and vit.size == pipe.policy.vit_size(transparent.size)
    assert np.array_equal(np.asarray(vit), np.asarray(composite.resize(vit.size, Image.BICUBIC)))
