"""Every command answers bad arguments and missing files with one line on stderr and status 2."""

from __future__ import annotations

import errno
import os
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL.Image import DecompressionBombError
from safetensors import SafetensorError

from lightbagel.cli import data, demo, export, fit, plan
from lightbagel.cli import eval as eval_cli
from lightbagel.cli.common import at_boundary
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
        "generate-infinite-guidance": (generate_main, ["a", "--model", model, "--cfg-text", "inf"],
                                       ["--cfg-text", "finite"]),
        "generate-nan-renorm-min": (generate_main, ["a", "--model", model, "--renorm-min", "nan", "--out", str(tmp)],
                                    ["renorm_min must be a finite number"]),
        "generate-260kb-prompt": (generate_main, ["red " * 65_000, "--model", model, "--out", str(tmp)],
                                  ["prompt 1 is longer than the 512 tokens this model reads"]),
        # Errors of the library layers (ValueError, OSError) reach the command line as one line too.
        "fit-no-objective": (fit.main, [str(TINY), "objective.flow_weight=0", f"output_dir={tmp / 'o'}"],
                             ["objective.flow_weight 0.0", "at least one > 0"]),
        "fit-sd3-rope-theta": (fit.main, [str(TINY), "generation=tiny_sd3", "generation.rope_theta=5",
                                          f"output_dir={tmp / 'o'}"], ["SD3 has no rotary embedding"]),
        "fit-output-under-a-file": (fit.main, [str(TINY), f"output_dir={TINY / 'run'}"], ["tiny.yaml"]),
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


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that claims `width` x `height` pixels: a decompression bomb costs nothing to make."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))
    return path


# 100M pixels: PIL only warns, then would decode ~300 MB; 400M: PIL raises its own error.
@pytest.mark.parametrize("side", [10_000, 20_000])
@pytest.mark.parametrize("command", [edit_main, chat_main])
def test_a_decompression_bomb_is_refused_in_one_line(command, side, export_dir, tmp_path, capsys):
    bomb = _png_header(tmp_path / "bomb.png", side, side)
    out = ["--out", str(tmp_path)] if command is edit_main else []
    assert command(["x", "--image", str(bomb), "--model", export_dir, *out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bomb) in err, err


def _raise(error: BaseException):
    def run() -> int:
        raise error
    return run


# What a full disk or a hostile file raises inside the libraries every command calls.
LIBRARY_ERRORS = {
    "disk-full": lambda: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "out/model.safetensors"),
    "safetensors-write": lambda: SafetensorError("Error while serializing: I/O error: No space left on device"),
    "decompression-bomb": lambda: DecompressionBombError("Image size (400000000 pixels) exceeds limit"),
}


@pytest.mark.parametrize("kind", list(LIBRARY_ERRORS))
def test_an_expected_library_error_is_one_line(kind, capsys):
    assert at_boundary("lightbagel-x", _raise(LIBRARY_ERRORS[kind]())) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightbagel-x: ") and "\n" not in err and "Traceback" not in err, err
