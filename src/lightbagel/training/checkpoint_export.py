"""Exports for `lightbagel-fit` and `lightbagel-export`: a (sharded) checkpoint or a trained
module -> `model.safetensors` + `recipe.yaml` (model_folder.py's layout), plus `ema/` (the
same layout, EMA weights) and, for LoRA runs, `adapter/` (peft format) beside merged weights.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf
from safetensors import safe_open

from lightbagel.model_folder import WEIGHTS, export_model, parse_recipe, refuse_code_loading
from lightbagel.recipe.schema import RecipeConfig
from lightbagel.training.checkpointing import META, safe_load
from lightbagel.training.lora import lora_layers, merge_lora, save_adapters


def plain_recipe(recipe: RecipeConfig) -> RecipeConfig:
    """The recipe of an exported model: its weights already hold init_from and merged LoRA."""
    trainer = replace(recipe.trainer, lora=replace(recipe.trainer.lora, enabled=False))
    return replace(recipe, init_from=None, trainer=trainer)


def _touched(model, recipe: RecipeConfig) -> set[str]:
    """Weights that differ from what the recipe's cards alone would load."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    names |= {f"{n}.weight" for n, _ in lora_layers(model)} | {f"{n}.bias" for n, _ in lora_layers(model)}
    names |= {n for n, _ in model.named_parameters() if n.startswith("fusion.")}
    if recipe.init_from:
        with safe_open(Path(recipe.init_from) / WEIGHTS, framework="pt") as f:
            names |= set(f.keys())
    return names


def export_lightbagel(model, recipe: RecipeConfig, out_dir: Path) -> Path:
    """Merges LoRA (saving the adapters first) and writes the export; mutates `model`."""
    touched = _touched(model, recipe)
    if lora_layers(model):
        save_adapters(model, out_dir / "adapter")
        merge_lora(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name in touched)
    plain = plain_recipe(recipe)
    return export_model(model, plain, OmegaConf.to_yaml(OmegaConf.structured(plain)), out_dir)


def export_module(module, out_dir: Path) -> Path:
    """An unsharded LightBagelModule -> out_dir (and out_dir/ema with EMA)."""
    if module.ema is not None:
        averaged = copy.deepcopy(module.model)
        module.ema.copy_to(averaged)
        export_lightbagel(averaged, module.trained_recipe(), out_dir / "ema")
    return export_lightbagel(module.model, module.trained_recipe(), out_dir)


def export_trained(trainer, module, recipe_yaml: str, out_dir: Path) -> Path:
    """After `trainer.fit`: gathers sharded weights (every rank calls this); rank 0 writes."""
    if module.device_mesh is None:
        return export_module(module, out_dir)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if trainer.is_global_zero:
        export_module(unsharded(module.recipe, full), out_dir)
    trainer.strategy.barrier("lightbagel.export")
    return out_dir / WEIGHTS


def unsharded(recipe: RecipeConfig, state: Optional[dict] = None):
    from lightbagel.training.module import LightBagelModule

    module = LightBagelModule(recipe)
    module.configure_model()  # no device mesh: nothing is sharded; creates the EMA buffers
    if state is not None:
        module.load_state_dict(state)
    return module


def read_checkpoint_recipe(ckpt: Path, trust_remote_code: bool = False) -> RecipeConfig:
    """The recipe a checkpoint was trained with; like a model folder's, it may not turn on code loading."""
    meta_path = ckpt / META if ckpt.is_dir() else ckpt
    if not meta_path.is_file():
        raise FileNotFoundError(f"{ckpt} is not a lightbagel checkpoint (no {META}); pass a step-*.ckpt path")
    meta = safe_load(meta_path, mmap=not ckpt.is_dir())
    if "recipe_yaml" not in meta:
        raise KeyError(f"{ckpt} holds no recipe (saved before lightbagel stored one); export with the CLI's --recipe")
    return refuse_code_loading(parse_recipe(meta["recipe_yaml"], ckpt), ckpt, trust_remote_code)


def export_checkpoint(ckpt: Path | str, out_dir: Path | str, trust_remote_code: bool = False) -> Path:
    """A checkpoint from any number of ranks (or a single-file one) -> one safetensors export."""
    ckpt, out_dir = Path(ckpt), Path(out_dir)
    recipe = read_checkpoint_recipe(ckpt, trust_remote_code)
    module = unsharded(recipe)
    if ckpt.is_dir():
        import torch.distributed.checkpoint as dcp

        state = {"state_dict": module.state_dict()}
        dcp.load(state, checkpoint_id=str(ckpt), no_dist=True)  # reassembles the shards in place
        module.load_state_dict(state["state_dict"])
    else:
        module.load_state_dict(safe_load(ckpt)["state_dict"])
    return export_module(module, out_dir)
