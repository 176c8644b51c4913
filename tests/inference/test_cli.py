"""lightbagel-generate / -edit / -chat on a saved tiny export."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from lightbagel.cli.generate import chat_main, edit_main, generate_main


@pytest.fixture
def export(tiny_recipe, tmp_path):
    from lightbagel.inference import LightBagelPipeline
    from lightbagel.model import build_model

    model = build_model(tiny_recipe.config).eval()
    with torch.no_grad():
        for p in model.fusion.parameters():
            p.normal_(0, 0.2)
    LightBagelPipeline(model, tiny_recipe.config).save_pretrained(tmp_path / "export")
    return tmp_path / "export"


FAST = ["--steps", "2", "--cfg-interval", "0", "1"]


def test_generate_writes_pngs_and_settings(export, tmp_path):
    out = tmp_path / "gen"
    rc = generate_main(["a red circle", "two blue squares", "--model", str(export), "--out", str(out),
                        "--num-images", "2", "--seed", "5", "--batch-size", "3", *FAST])
    assert rc == 0
    assert sorted(p.name for p in out.glob("0*.png")) == [f"{i:05d}.png" for i in range(4)]
    with Image.open(out / "preview.png") as preview:  # the 32 px images side by side, enlarged to be seen
        assert preview.size == (4 * 256, 256)
    settings = json.loads((out / "settings.json").read_text())
    assert [r["seed"] for r in settings["images"]] == [5, 6, 7, 8]
    assert settings["sampler"]["t2i"]["steps"] == 2 and settings["sampler"]["t2i"]["use_cache"] is True


def test_edit_takes_one_or_more_sources(export, tmp_path):
    src = tmp_path / "src.png"
    Image.new("RGB", (32, 32), (230, 230, 230)).save(src)
    out = tmp_path / "edit"
    rc = edit_main(["make the circle green", "--image", str(src), "--image", str(src), "--model", str(export),
                    "--out", str(out), "--no-cache", *FAST])
    assert rc == 0 and (out / "00000.png").is_file()
    settings = json.loads((out / "settings.json").read_text())
    assert settings["images"][0]["num_sources"] == 2 and settings["sampler"]["edit"]["use_cache"] is False


def test_chat_answers_and_bad_model_dir_is_one_line(export, tmp_path, capsys, caplog):
    src = tmp_path / "src.png"
    Image.new("RGB", (32, 32), (230, 230, 230)).save(src)
    assert chat_main(["how many objects are there", "what color is it", "--image", str(src), "--model", str(export),
                      "--max-new-tokens", "2"]) == 0
    assert "Q: how many objects are there\nA:" in capsys.readouterr().out
    warned = [r.getMessage() for r in caplog.records if "never trained" in r.getMessage()]
    assert len(warned) == 1 and "tiny_qwen2_5_vl" in warned[0]  # the tiny VLM is random: said once
    assert generate_main(["a red circle", "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightbagel-generate:") and "recipe.yaml" in err and "\n" not in err


def test_default_output_folder_never_overwrites_an_earlier_run(tmp_path):
    from lightbagel.cli.generate import _fresh_dir

    assert _fresh_dir(tmp_path).name == "run-0001"
    (tmp_path / "run-0001").mkdir()
    (tmp_path / "run-0007").mkdir()
    assert _fresh_dir(tmp_path).name == "run-0008"
