"""`lightbagel-fit` on a machine that lacks what the recipe needs: one line, in seconds, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightbagel.cli.fit import main

PAPER = str(Path(__file__).resolve().parents[2] / "recipes" / "lightbagel_7b_5b.yaml")


def fit_error(capsys, *overrides: str) -> str:
    assert main([PAPER, *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is here: the card's need is met")
def test_a_gpu_card_without_a_gpu_says_so_and_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "run"
    err = fit_error(capsys, f"output_dir={out}")
    assert "trainer.accelerator gpu (trainer card fsdp2_gpu) needs CUDA GPUs" in err and "trainer=cpu" in err
    assert not out.exists()  # no folder, no .lock


def test_a_hub_id_that_cannot_be_reached_names_the_key_and_the_local_folder_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    err = fit_error(capsys, f"output_dir={out}", "trainer=cpu")
    assert "understanding.pretrained 'Qwen/Qwen2.5-VL-7B-Instruct' is not a local folder nor in the Hugging " \
           "Face cache, and HF_HUB_OFFLINE is set" in err
    assert "set understanding.pretrained=/path/to/that/folder" in err
    assert not out.exists()


def test_a_tower_shipped_in_the_package_passes_offline(monkeypatch):
    """A card's `pretrained:` that names a shipped tower (src/lightbagel/towers/) is found by name,
    as from_pretrained finds it, with no hub and no cache."""
    from lightbagel.recipe import load_recipe
    from lightbagel.training.preflight import check_sources

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_vae = Path(__file__).resolve().parents[2] / "recipes" / "pretrain" / "tiny_vae.yaml"
    check_sources(load_recipe(tiny_vae, ["generation.vae.pretrained=shapes_wan_vae",
                                         "understanding=shapes_qwen2_5_vl",
                                         "understanding.pretrained=shapes_qwen2_5_vl"]).config)
