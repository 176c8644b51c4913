"""Safetensors export of a trained model, and loading it back.

The file holds every trainable weight plus every weight that no hub id or local directory can
restore (random-initialised parts of tiny cards); `recipe.yaml` beside it rebuilds the model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from lightbagel.model import LightBagel, build_model
from lightbagel.recipe.schema import RecipeConfig

WEIGHTS, RECIPE = "model.safetensors", "recipe.yaml"


def exported_state(model: LightBagel, recipe: RecipeConfig) -> dict[str, torch.Tensor]:
    keep_frozen = {
        "und.": recipe.understanding.pretrained is None,
        "gen.dit.": recipe.generation.pretrained is None,
        "gen.vae.": recipe.generation.vae.pretrained is None,
    }
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if name in trainable or any(name.startswith(p) and keep for p, keep in keep_frozen.items()):
            # safetensors refuses tensors sharing storage (tied weights): copy the repeats.
            ptr = tensor.data_ptr()
            state[name] = tensor.detach().clone() if ptr in seen else tensor.detach().contiguous()
            seen.add(ptr)
    return state


def atomic_write(path: Path, write) -> None:
    """Writes through a temp file in the same directory, then renames: never a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_model(model: LightBagel, recipe: RecipeConfig, recipe_yaml: str, out_dir: Path) -> Path:
    state = exported_state(model, recipe)
    atomic_write(out_dir / WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    atomic_write(out_dir / RECIPE, lambda tmp: Path(tmp).write_text(recipe_yaml))
    return out_dir / WEIGHTS


def resolved_recipe(path: Path) -> RecipeConfig:
    """A fully resolved recipe (as exported) needs no cards: validate it against the schema."""
    merged = OmegaConf.merge(OmegaConf.structured(RecipeConfig), OmegaConf.load(path))
    return OmegaConf.to_object(merged)


def load_exported(out_dir: Path | str, device: str = "cpu") -> LightBagel:
    """Rebuilds the model from `recipe.yaml` and loads the exported weights into it."""
    out_dir = Path(out_dir)
    recipe = resolved_recipe(out_dir / RECIPE)
    model = build_model(recipe)
    state = load_file(out_dir / WEIGHTS, device=device)
    missing = set(state) - set(model.state_dict())
    if missing:
        raise KeyError(f"{out_dir / WEIGHTS} holds weights this recipe's model lacks: {sorted(missing)[:5]}")
    model.load_state_dict(state, strict=False)
    return model.to(device)
