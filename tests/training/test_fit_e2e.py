"""`lightbagel-fit` end to end at tiny size: MLflow run, sample grids, export that loads back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from mlflow import MlflowClient
from PIL import Image

from lightbagel.cli.fit import main
from lightbagel.data.collate import Collator
from lightbagel.model_folder import load_exported
from lightbagel.recipe import load_recipe
from lightbagel.shapes.heldout import validation_samples
from lightbagel.training.callbacks import render_samples
from lightbagel.training.fit import fit

TINY = Path(__file__).resolve().parents[2] / "recipes" / "tiny.yaml"


def _short_run(tmp_path, *extra):
    overrides = [
        f"output_dir={tmp_path / 'out'}", f"data.root={tmp_path / 'data'}", "data.num_samples=64",
        "data.batch_size=8", "trainer.max_steps=12", "trainer.log_every_n_steps=2",
        "trainer.sample_every_n_steps=6", "trainer.num_sample_images=2", "trainer.sample_steps=2",
        "trainer.enable_progress_bar=false", *extra,
    ]
    return load_recipe(TINY, overrides)


def test_fit_logs_to_mlflow_and_exports_a_model_that_loads_back(tmp_path):
    recipe = _short_run(tmp_path)
    result = fit(recipe)
    out = tmp_path / "out"
    assert result.first_loss is not None and torch.isfinite(torch.tensor(result.last_loss))
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == [
        "step_000006.png", "step_000012.png"]

    client = MlflowClient(tracking_uri=result.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.data.params["trainer.max_steps"] == "12"
    history = client.get_metric_history(result.run_id, "loss/train")
    assert len(history) >= 5
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"recipe.yaml", "samples", "exports"} <= artifacts
    # Exports are versioned by step, on disk and in the run; `export` points at the newest.
    assert (out / "export").resolve() == (out / "exports" / "step-00000012").resolve()
    logged = {a.path for a in client.list_artifacts(result.run_id, "exports/step-00000012")}
    assert "exports/step-00000012/model.safetensors" in logged

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


def test_cli_turns_data_errors_inside_fit_into_one_line(tmp_path, capsys):
    """A source matching no shard, and shards with no readable sample, are raised inside
    `trainer.fit`; the command prints one line and exits 2."""
    (tmp_path / "junk-0.tar").write_bytes(b"not a tar at all" * 64)
    base = [f"output_dir={tmp_path / 'out'}", "trainer.mlflow.enabled=false", "trainer.max_steps=2",
            "trainer.enable_progress_bar=false", "data.source=webdataset"]
    cases = {f"['{tmp_path}/none-*.tar']": "data source 'a': urls",
             f"['{tmp_path}/junk-0.tar']": "data source 'a': no readable samples"}
    for urls, message in cases.items():
        assert main([str(TINY), *base, f"data.sources=[{{name: a, urls: {urls}}}]"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"lightbagel-fit: {message}") and "\n" not in err, err


def test_cli_turns_a_bad_shapes_world_into_one_line(tmp_path, capsys):
    args = [str(TINY), f"output_dir={tmp_path / 'out'}", f"data.root={tmp_path / 'data'}",
            "trainer.mlflow.enabled=false", "data.image_size=4", "data.vit_image_size=4"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightbagel-fit: shapes shards need num_samples >= 1, image_size >= 8") and "\n" not in err


def test_pretrained_recipe_freezes_the_vlm_its_stage_trained(tmp_path, capsys):
    """recipes/tiny_pretrained.yaml (opt-in) trains recipes/tiny_vlm.yaml first, once, and starts
    from its VLM; the embedded default has no such stage."""
    from safetensors.torch import load_file

    from lightbagel.model import build_model
    from lightbagel.training.fit import run_pretrain

    assert load_recipe(TINY).config.pretrain.recipe is None
    stage = [f"data.root={tmp_path / 'und'}", "data.num_samples=16", "data.batch_size=4", "trainer.max_steps=2",
             "trainer.mlflow.enabled=false", "trainer.enable_progress_bar=false"]
    recipe = load_recipe(TINY.parent / "tiny_pretrained.yaml", [
        f"output_dir={tmp_path / 'out'}", f"data.root={tmp_path / 'data'}", "data.num_samples=16",
        "data.batch_size=4", "trainer.max_steps=2", "trainer.sample_every_n_steps=0",
        "trainer.mlflow.enabled=false", "trainer.enable_progress_bar=false",
        f"pretrain.output_dir={tmp_path / 'vlm'}", f"pretrain.overrides=[{','.join(stage)}]"])
    fit(recipe)
    assert "training it first" in capsys.readouterr().out
    # The frozen VLM is the one the stage trained: the same weights, and not the random init.
    trained = load_file(tmp_path / "vlm" / "export" / "model.safetensors")
    final = load_file(tmp_path / "out" / "export" / "model.safetensors")
    und = [k for k in trained if k.startswith("und.")]
    assert und and all(torch.equal(trained[k], final[k]) for k in und)
    random_init = build_model(recipe.config).state_dict()
    assert not all(torch.equal(trained[k], random_init[k]) for k in und)
    said = []
    assert run_pretrain(recipe, said.append) == tmp_path / "vlm" / "export" and "reusing" in said[0]
