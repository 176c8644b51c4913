"""`lightbagel-fit` runs with each new card swapped into the tiny recipe by one line."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lightbagel.cli.fit import main
from lightbagel.model_folder import resolved_recipe

REPO = Path(__file__).resolve().parents[2]
SHORT = ["trainer.max_steps=2", "trainer.mlflow.enabled=false", "trainer.sample_every_n_steps=0",
         "trainer.num_sample_images=1", "trainer.sample_steps=1", "trainer.enable_progress_bar=false",
         "data.batch_size=4", "data.num_samples=64"]


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    """One set of shapes shards for every swap, outside the repository."""
    return tmp_path_factory.mktemp("shapes")


@pytest.mark.parametrize("swap", ["understanding=tiny_qwen2_vl", "generation=tiny_wan2_1",
                                  "generation=tiny_sd3_pixel", "fusion=none"])
def test_fit_with_one_line_swap(swap, shapes_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = [str(REPO / "recipes" / "tiny.yaml"), swap, f"output_dir={out}", f"data.root={shapes_root}", *SHORT]
    assert main(args) == 0
    done = re.search(r"^done in .*; loss (\S+) -> (\S+)$", capsys.readouterr().out, re.M)  # after progress lines
    first, last = float(done[1]), float(done[2])
    assert math.isfinite(first) and math.isfinite(last)
    kind, card = swap.split("=")
    exported = resolved_recipe(out / "export" / "recipe.yaml")
    assert getattr(exported, kind).card == card
    assert load_file(out / "export" / "model.safetensors")  # the trained weights were written
