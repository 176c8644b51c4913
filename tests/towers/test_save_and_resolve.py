"""A trained tower -> a `from_pretrained` folder, and cards finding shipped towers by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightbagel.backbones.loading import TOWERS_PACKAGE, resolve_pretrained
from lightbagel.model import build_model
from lightbagel.recipe import load_recipe
from lightbagel.training.towers import save_tower

REPO = Path(__file__).resolve().parents[2]
SCRATCH = REPO / "recipes" / "tiny_scratch.yaml"
VAE_RECIPE = REPO / "recipes" / "pretrain" / "tiny_vae.yaml"


def test_a_local_folder_wins_then_a_shipped_tower_then_the_hub_id(tmp_path, monkeypatch):
    from importlib.resources import files

    shipped = Path(str(files(TOWERS_PACKAGE)))
    assert resolve_pretrained("Qwen/Qwen2.5-VL-7B-Instruct") == "Qwen/Qwen2.5-VL-7B-Instruct"
    names = [p.name for p in shipped.iterdir() if p.is_dir() and not p.name.startswith("_")]
    for name in names:
        assert resolve_pretrained(name) == str(shipped / name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    assert resolve_pretrained("mine") == "mine"


def bf16_rounded(module: torch.nn.Module) -> None:
    for p in module.parameters():
        p.data = p.data.to(torch.bfloat16).float()


def test_a_saved_vae_tower_loads_through_its_card_and_encodes_alike(tmp_path):
    model = build_model(load_recipe(VAE_RECIPE).config).eval()
    folder = save_tower(model, "vae", tmp_path / "vae")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in folder.iterdir())
    loaded = build_model(load_recipe(VAE_RECIPE, [f"generation.vae.pretrained={folder}"]).config).eval()
    bf16_rounded(model.gen.vae)  # the folder stores bf16; both then run the same fp32 kernels
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.gen.vae.encode(images), model.gen.vae.encode(images))
    with pytest.raises(FileExistsError, match="never replaced"):
        save_tower(model, "vae", folder)


def test_a_card_sets_the_latent_statistics_over_its_checkpoint_but_not_the_architecture(tmp_path):
    """A continued VAE run exports the statistics it measured beside the weights it started from:
    the card's latents_mean/std win on load; an architecture key that differs still fails."""
    folder = save_tower(build_model(load_recipe(VAE_RECIPE).config), "vae", tmp_path / "vae")
    mean, std = [0.5] * 16, [2.0] * 16
    overrides = [f"generation.vae.pretrained={folder}", f"generation.vae.config.latents_mean={mean}",
                 f"generation.vae.config.latents_std={std}"]
    codec = build_model(load_recipe(VAE_RECIPE, overrides).config).gen.vae
    assert codec.mean.flatten().tolist() == mean and codec.std.flatten().tolist() == std
    assert codec.vae.config.latents_mean == mean
    with pytest.raises(ValueError, match="card config base_dim=32 but the checkpoint has 16; fix the card"):
        build_model(load_recipe(VAE_RECIPE, overrides + ["generation.vae.config.base_dim=32"]).config)


def test_a_saved_vlm_tower_brings_its_tokenizer_and_image_processor(tmp_path, make_batch):
    model = build_model(load_recipe(SCRATCH).config).eval()
    folder = save_tower(model, "understanding", tmp_path / "vlm")
    card = [f"understanding.pretrained={folder}", "understanding.tokenizer=null"]
    loaded = build_model(load_recipe(SCRATCH, card).config).eval()
    bf16_rounded(model.und)
    batch = make_batch(model, n=2)
    assert torch.equal(make_batch(loaded, n=2).und.input_ids, batch.und.input_ids)
    with torch.no_grad():
        assert torch.equal(loaded.vlm_logits(batch.und), model.vlm_logits(batch.und))
