"""Every command answers bad arguments and missing files with one line on stderr and status 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightbagel.cli import data, demo, export, fit, plan
from lightbagel.cli import eval as eval_cli
from lightbagel.cli.generate import chat_main, edit_main, generate_main

TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from lightbagel.inference import LightBagelPipeline
    from lightbagel.model import build_model
    from lightbagel.recipe import load_recipe

    recipe = load_recipe(TINY).config
    out = tmp_path_factory.mktemp("cli") / "export"
    LightBagelPipeline(build_model(recipe).eval(), recipe).save_pretrained(out)
    return str(out)


def _cases(model: str, tmp) -> dict[str, tuple]:
    """name -> (command, argv, words the one line must hold)."""
    return {
        "generate-zero-steps": (generate_main, ["a", "--model", model, "--steps", "0"], ["--steps", ">= 1"]),
        "generate-negative-images": (generate_main, ["a", "--model", model, "--num-images", "-1"],
                                     ["--num-images"]),
        "generate-empty-prompt": (generate_main, ["  ", "--model", model], ["prompt 1 is empty"]),
        "generate-missing-prompt-file": (generate_main, ["--prompt-file", str(tmp / "nope.txt"), "--model", model],
                                         ["nope.txt"]),
        "generate-missing-model": (generate_main, ["a", "--model", str(tmp / "nope")], ["recipe.yaml"]),
        "generate-bad-device": (generate_main, ["a", "--model", model, "--device", "potato"], ["--device potato"]),
        "edit-missing-image": (edit_main, ["x", "--image", str(tmp / "nope.png"), "--model", model], ["nope.png"]),
        "edit-not-an-image": (edit_main, ["x", "--image", str(TINY), "--model", model], ["--image"]),
        "chat-without-image": (chat_main, ["what", "--model", model], ["--image"]),
        "eval-missing-model": (eval_cli.main, [str(tmp / "nope")], ["recipe.yaml"]),
        "eval-zero-per-category": (eval_cli.main, [model, "--per-category", "0"], ["--per-category"]),
        "export-missing": (export.main, [str(tmp / "nope.ckpt"), str(tmp / "o")], ["nope.ckpt", "not found"]),
        "data-bad-caption": (data.main, ["render", "a pink circle", str(tmp / "s.png")], ["pink", "colors"]),
        "data-missing-folder": (data.main, ["images", str(tmp / "nope"), str(tmp / "o")], ["nope"]),
        "plan-zero-gpus": (plan.main, [str(TINY), "--gpus", "0"], ["--gpus"]),
        "fit-unknown-flag": (fit.main, [str(TINY), "--bogus"], ["--bogus"]),
        "demo-missing-model": (demo.main, ["--model", str(tmp / "nope")], ["recipe.yaml"]),
    }


@pytest.mark.parametrize("name", list(_cases("model", Path("tmp"))))
def test_bad_input_is_one_line(name, export_dir, tmp_path, capsys):
    command, argv, words = _cases(export_dir, tmp_path)[name]
    try:
        status = command(argv)
    except SystemExit as exit_info:  # argparse's own refusals
        status = exit_info.code
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert all(word in err for word in words), err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_says_so(export_dir, capsys):
    assert generate_main(["a red circle", "--model", export_dir, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "lightbagel-generate: --device cuda: torch sees no CUDA GPU on this machine; use --device cpu"
