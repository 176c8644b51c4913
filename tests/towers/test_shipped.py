"""Each shipped tower (src/lightbagel/towers/) loads through its card's `from_pretrained` path, by
name, and gives its pinned output. The pins change when a tower is retrained (docs/tiny.md)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import numpy as np
import torch

from lightbagel import shapes
from lightbagel.backbones.loading import TOWERS_PACKAGE
from lightbagel.inference import LightBagelPipeline
from lightbagel.model import build_model
from lightbagel.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
SCENE = shapes.Scene([shapes.ShapeObject("triangle", "green", 0.3, 0.5, 0.35),
                      shapes.ShapeObject("circle", "blue", 0.75, 0.5, 0.3)])


def test_the_package_ships_each_tower_as_a_from_pretrained_folder():
    shipped = Path(str(files(TOWERS_PACKAGE)))
    towers = {p.name: sorted(f.name for f in p.iterdir()) for p in shipped.iterdir() if p.is_dir()
              and not p.name.startswith("_")}
    assert towers["shapes_wan_vae"] == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= set(
        towers["shapes_qwen2_5_vl"])
    size = sum(f.stat().st_size for f in shipped.rglob("*") if f.is_file())
    assert size < 30e6  # issue 20's budget for every tower together


def test_the_shipped_vae_encodes_its_pinned_latents():
    recipe = load_recipe(REPO / "recipes" / "pretrain" / "tiny_dit.yaml").config  # shapes_wan: the shipped VAE
    assert recipe.generation.vae.pretrained == "shapes_wan_vae"
    codec = build_model(recipe).gen.vae.eval()
    image = torch.from_numpy(np.array(shapes.render(SCENE, 32))).permute(2, 0, 1).float()[None] / 127.5 - 1
    with torch.no_grad():
        latents = codec.encode(image)
    assert latents.shape == (1, 16, 4, 4)
    expected = torch.tensor([-0.9289, 0.9646, -1.5089, -0.6423, -0.0864, -1.7215])
    # fp32 convolutions of bf16-stored weights: kernels differ across CPUs by ~1e-6 relative.
    torch.testing.assert_close(latents[0, :6, 1, 1], expected, atol=2e-3, rtol=0)


def test_the_shipped_vlm_answers_its_pinned_question():
    overrides = ["understanding.pretrained=shapes_qwen2_5_vl", "understanding.tokenizer=null"]
    recipe = load_recipe(REPO / "recipes" / "tiny_vlm.yaml", overrides).config
    pipe = LightBagelPipeline(build_model(recipe).eval(), recipe)
    assert pipe.understand("what color is the circle", [shapes.render(SCENE, 32)], max_new_tokens=4) == "blue"
