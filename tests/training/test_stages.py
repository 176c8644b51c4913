"""A recipe's pretrain stage (training/stages.py): reused only when it is a finished run of exactly
this stage recipe, and its parts copied only when every weight fits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lightbagel.errors import ModelFolderError
from lightbagel.recipe import load_recipe
from lightbagel.training.stages import is_complete, load_parts, stage_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _stage(tmp_path: Path, *overrides: str):
    recipe = load_recipe(RECIPES / "tiny_pretrained.yaml", [f"pretrain.output_dir={tmp_path / 'vlm'}",
                                                           f"pretrain.overrides=[{','.join(overrides)}]"])
    return stage_recipe(recipe)


def test_an_export_is_reused_only_for_the_same_stage_recipe(tmp_path):
    stage = _stage(tmp_path, "trainer.max_steps=2")
    export = tmp_path / "vlm" / "export"
    export.mkdir(parents=True)
    (export / "recipe.yaml").write_text(stage.to_yaml())
    assert not is_complete(export, stage)  # no weights: the run never finished
    (export / "model.safetensors").write_bytes(b"")
    assert is_complete(export, stage)
    assert not is_complete(export, _stage(tmp_path, "trainer.max_steps=2", "optim.lr=3e-4"))


@pytest.fixture
def saved(tiny_model, tmp_path):
    """The tiny model's weights as a stage export holds them."""
    state = {k: v.detach().clone().contiguous() for k, v in tiny_model.state_dict().items()}
    return tiny_model, state


@pytest.mark.parametrize("edit", ["missing", "unexpected"])
def test_a_part_whose_weights_do_not_all_fit_is_refused(saved, tmp_path, edit):
    model, state = saved
    und = sorted(k for k in state if k.startswith("und."))
    if edit == "missing":
        del state[und[0]]
    else:
        state["und.extra.weight"] = torch.zeros(2)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ModelFolderError, match=f"{edit} .*use the same card"):
        load_parts(model, tmp_path, ["understanding"])


def test_a_part_that_fits_is_copied(saved, tmp_path):
    model, state = saved
    state = {k: v + 1 if k.startswith("und.") and v.is_floating_point() else v for k, v in state.items()}
    save_file(state, tmp_path / "model.safetensors")
    load_parts(model, tmp_path, ["understanding"])
    name = next(k for k in state if k.startswith("und.") and state[k].is_floating_point())
    assert torch.equal(model.state_dict()[name], state[name])


@pytest.mark.parametrize("parts", ["[vision]", "[]"])
def test_unknown_or_no_parts_are_refused_in_one_line(parts):
    recipe = load_recipe(RECIPES / "tiny_pretrained.yaml", [f"pretrain.parts={parts}"])
    allowed = "allowed values are understanding, generation, fusion"
    with pytest.raises(ValueError, match=rf"^pretrain.parts \[.*\]: {allowed}$"):
        stage_recipe(recipe)


def test_a_part_of_another_shape_is_refused_in_one_line(saved, tmp_path):
    model, state = saved
    name = next(k for k in sorted(state) if k.startswith("und.") and state[k].dim() == 2)
    state[name] = torch.zeros(3, 3)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ModelFolderError, match=r"does not fit this recipe's understanding: .*; use the same card$"):
        load_parts(model, tmp_path, ["understanding"])
