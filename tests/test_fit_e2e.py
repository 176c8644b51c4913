"""`lightbagel-fit` end to end at tiny size: MLflow run, sample grids, export that loads back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from mlflow import MlflowClient
from PIL import Image
from safetensors.torch import load_file

from lightbagel.cli.fit import main
from lightbagel.data.collate import Collator
from lightbagel.model import build_model
from lightbagel.recipe import load_recipe
from lightbagel.training.callbacks import render_samples, validation_samples
from lightbagel.training.export import load_exported
from lightbagel.training.fit import fit
from lightbagel.training.stages import run_pretrain

TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml"


def _short_run(tmp_path, *extra):
    # The VLM stage (recipes/tiny_vlm.yaml) runs too, cut as short.
    stage = [f"data.root={tmp_path / 'und'}", "data.num_samples=32", "trainer.max_steps=3",
             "trainer.mlflow.enabled=false", "trainer.enable_progress_bar=false"]
    overrides = [
        f"output_dir={tmp_path / 'out'}", f"data.root={tmp_path / 'data'}", "data.num_samples=64",
        "data.batch_size=8", "trainer.max_steps=12", "trainer.log_every_n_steps=2",
        "trainer.sample_every_n_steps=6", "trainer.num_sample_images=2", "trainer.sample_steps=2",
        "trainer.enable_progress_bar=false", f"pretrain.output_dir={tmp_path / 'vlm'}",
        f"pretrain.overrides=[{','.join(stage)}]", *extra,
    ]
    return load_recipe(TINY, overrides)


def test_fit_logs_to_mlflow_and_exports_a_model_that_loads_back(tmp_path, capsys):
    recipe = _short_run(tmp_path)
    result = fit(recipe)
    out = tmp_path / "out"
    assert "training it first" in capsys.readouterr().out
    # The frozen VLM is the one the stage trained: the same weights, and not the random init.
    stage = load_file(tmp_path / "vlm" / "export" / "model.safetensors")
    final = load_file(out / "export" / "model.safetensors")
    und = [k for k in stage if k.startswith("und.")]
    assert und and all(torch.equal(stage[k], final[k]) for k in und)
    random_init = build_model(recipe.config).state_dict()
    assert not all(torch.equal(stage[k], random_init[k]) for k in und)
    said = []
    assert run_pretrain(recipe, said.append) == tmp_path / "vlm" / "export" and "reusing" in said[0]
    assert result.first_loss is not None and torch.isfinite(torch.tensor(result.last_loss))
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == [
        "step_000006.png", "step_000012.png"]

    client = MlflowClient(tracking_uri=result.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.data.params["trainer.max_steps"] == "12"
    history = client.get_metric_history(result.run_id, "train/loss")
    assert len(history) >= 5
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"recipe.yaml", "samples", "model.safetensors"} <= artifacts

    # The exported model reproduces the final sample grid bit for bit (same prompts, same seed).
    trained = load_exported(out / "export").eval()
    tr = recipe.config.trainer
    collator = Collator(trained.und.processor, recipe.config.data.vit_image_size)
    grid = render_samples(trained, collator, validation_samples(tr.num_sample_images, 32), tr.sample_steps,
                          recipe.config.objective.timestep_shift, guidance=2.0)
    saved = np.asarray(Image.open(out / "samples" / "step_000012.png"))
    assert np.array_equal(np.asarray(grid), saved)
    # Training moved the fusion blocks away from their zero init.
    assert any(p.abs().sum() > 0 for n, p in trained.fusion.named_parameters() if "to_out" in n)


def test_cli_rejects_bad_override_before_building(tmp_path, capsys):
    assert main([str(TINY), "trainer.max_stepz=5"]) == 2
    err = capsys.readouterr().err
    assert "trainer.max_stepz" in err and "command line" in err and "max_steps" in err
    assert main([str(TINY), "trainer.max_steps=fifty"]) == 2
    assert "trainer.max_steps" in capsys.readouterr().err
