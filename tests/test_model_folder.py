"""A model folder (an export) from elsewhere: it cannot run code, and a broken one is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lightbagel.cli.generate import generate_main
from lightbagel.errors import ModelFolderError
from lightbagel.inference import LightBagelPipeline
from lightbagel.model_folder import load_exported

EVIL_CODE = """
from pathlib import Path
Path({marker!r}).write_text("ran")
from transformers import PreTrainedTokenizer
class EvilTokenizer(PreTrainedTokenizer):
    def __init__(self, **kwargs):
        raise ValueError("a tokenizer that only ran code")
"""


@pytest.fixture(scope="module")
def export(tiny_recipe, tmp_path_factory) -> Path:
    from lightbagel.model import build_model

    model = build_model(tiny_recipe.config).eval()
    with torch.no_grad():
        for p in model.fusion.parameters():
            p.normal_(0, 0.2)
    out = tmp_path_factory.mktemp("model") / "export"
    LightBagelPipeline(model, tiny_recipe.config).save_pretrained(out)
    return out


def _copy(export: Path, to: Path, **recipe_edits) -> Path:
    """A copy of the export whose recipe.yaml has `section.key` edits applied (value None deletes)."""
    to.mkdir(parents=True)
    (to / "model.safetensors").write_bytes((export / "model.safetensors").read_bytes())
    recipe = yaml.safe_load((export / "recipe.yaml").read_text())
    for dotted, value in recipe_edits.items():
        *parents, leaf = dotted.split("__")
        node = recipe
        for part in parents:
            node = node[part]
        node[leaf] = value
    (to / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return to


def _code_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A tokenizer folder whose `auto_map` points at Python that leaves a marker file when run."""
    folder, marker = tmp_path / "evil_tokenizer", tmp_path / "code_ran"
    folder.mkdir()
    (folder / "evil.py").write_text(EVIL_CODE.format(marker=str(marker)))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "EvilTokenizer", "auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}}))
    return folder, marker


def test_a_model_folder_cannot_turn_on_remote_code(export, tmp_path, capsys):
    evil, marker = _code_folder(tmp_path)
    folder = _copy(export, tmp_path / "model", understanding__pretrained=str(evil),
                   understanding__tokenizer=None, understanding__trust_remote_code=True)
    assert generate_main(["a red circle", "--model", str(folder), "--out", str(tmp_path / "gen")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "understanding.trust_remote_code" in err and "--trust-remote-code" in err, err
    assert not marker.exists()
    with pytest.raises(ModelFolderError, match="not honoured from a model folder"):
        LightBagelPipeline.from_pretrained(folder)
    # Only the user's own flag lets the folder's code run.
    assert generate_main(["a red circle", "--model", str(folder), "--trust-remote-code",
                          "--out", str(tmp_path / "gen")]) == 2  # then fails: the folder has no model
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("command", ["edit", "chat", "eval"])
def test_no_command_lets_a_model_folder_turn_on_remote_code(export, tmp_path, capsys, command):
    """Every command that reads a model folder refuses its remote code without the user's flag."""
    from PIL import Image

    from lightbagel.cli import eval as eval_cli
    from lightbagel.cli.generate import chat_main, edit_main

    evil, marker = _code_folder(tmp_path)
    folder = _copy(export, tmp_path / "model", understanding__pretrained=str(evil),
                   understanding__tokenizer=None, understanding__trust_remote_code=True)
    image = tmp_path / "scene.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    argv = {"edit": ["make it green", "--image", str(image), "--model", str(folder), "--out", str(tmp_path / "e")],
            "chat": ["what colour is it", "--image", str(image), "--model", str(folder)],
            "eval": [str(folder), "--out", str(tmp_path / "eval"), "--mlflow-uri", "none"]}[command]
    main = {"edit": edit_main, "chat": chat_main, "eval": eval_cli.main}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "understanding.trust_remote_code" in err and "--trust-remote-code" in err, err
    assert not marker.exists()


def test_a_checkpoint_recipe_cannot_turn_on_remote_code(tiny_recipe, tmp_path, capsys):
    from lightbagel.cli.export import main

    recipe = tiny_recipe.to_yaml().replace("trust_remote_code: false", "trust_remote_code: true")
    torch.save({"recipe_yaml": recipe, "state_dict": {}}, tmp_path / "step-00000002.ckpt")
    assert main([str(tmp_path / "step-00000002.ckpt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not honoured" in err and "--trust-remote-code" in err, err


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_a_malicious_pickle_is_refused_in_one_line(tmp_path, capsys):
    from lightbagel.cli.export import main

    torch.save({"recipe_yaml": "", "payload": _Evil()}, tmp_path / "step-00000002.ckpt")
    assert main([str(tmp_path / "step-00000002.ckpt"), str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and err.startswith("lightbagel-export:") and "refused" in err, err
    assert "pickled code ran" not in captured.out


def test_truncated_weights_name_the_file(export, tmp_path):
    folder = _copy(export, tmp_path / "model")
    whole = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelFolderError) as info:
        load_exported(folder)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{folder / 'model.safetensors'}: not a readable safetensors")


SYSTEM_FILES = {  # what a recipe.yaml linked to another file may hold: none of it may reach the error
    "passwd": "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n",
    "config": "token: hunter2-secret\n",
    "yaml-syntax": "password: [hunter2-secret\n",
    "known-key": "name: {hunter2-secret: 1}\n",
}


@pytest.mark.parametrize("kind", list(SYSTEM_FILES))
def test_a_recipe_linked_to_another_file_is_refused_without_echoing_it(export, tmp_path, capsys, kind):
    elsewhere = tmp_path / "etc" / kind
    elsewhere.parent.mkdir()
    elsewhere.write_text(SYSTEM_FILES[kind])
    folder = _copy(export, tmp_path / "model")
    (folder / "recipe.yaml").unlink()
    (folder / "recipe.yaml").symlink_to(elsewhere)
    assert generate_main(["a red circle", "--model", str(folder), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lightbagel-generate: {folder / 'recipe.yaml'}: not a lightbagel recipe"), err
    said = err.split("recipe.yaml:", 1)[1]  # the paths hold "root" (/tmp/pytest-of-root)
    assert "\n" not in err and not any(word in said for word in ("root", "daemon", "hunter2", "token", "password"))


@pytest.mark.parametrize(("edit", "message"), [
    # A narrower feed-forward: every block's weight has the wrong shape.
    ({"generation__config__ffn_dim": 128}, "weight 'gen.dit.blocks.0.ffn.net.0.proj.bias' has shape (256,)"),
    # Fewer blocks: the file holds weights the model lacks.
    ({"generation__config__num_layers": 2}, "weight 'fusion.2."),
    # More blocks: the random-initialised block 3 would be left at a seed's values, silently.
    ({"generation__config__num_layers": 4}, "lacks weight '"),
])
def test_a_recipe_that_does_not_match_the_weights_names_the_first_key(export, tmp_path, edit, message):
    folder = _copy(export, tmp_path / "model", **edit)
    with pytest.raises(ModelFolderError) as info:
        load_exported(folder)
    assert str(info.value).startswith(f"{folder / 'model.safetensors'}: {message}"), str(info.value)
    assert "\n" not in str(info.value)


def test_the_export_holds_the_frozen_random_initialised_weights(export, tiny_recipe):
    """README: the file holds every weight no hub id restores; the reload must not rebuild them from a seed."""
    from lightbagel.model import build_model

    state = load_file(export / "model.safetensors")
    saved = build_model(tiny_recipe.config).state_dict()
    frozen_und = [n for n in saved if n.startswith("und.")]
    assert frozen_und and set(frozen_und) <= set(state)
    assert {n for n in saved if n.startswith(("gen.dit.", "gen.vae.", "fusion."))} <= set(state)
    loaded = load_exported(export).state_dict()
    for name in frozen_und[:5]:
        torch.testing.assert_close(loaded[name], state[name], rtol=0, atol=0)


def test_an_export_from_the_release_with_card_dtypes_still_loads(export, tmp_path, caplog):
    """0.1 exports carry `understanding.dtype` / `generation.dtype`, which the precision plan replaced."""
    old = _copy(export, tmp_path / "old", understanding__dtype="bfloat16", generation__dtype="float32")
    with caplog.at_level("WARNING", logger="lightbagel.model_folder"):
        model = load_exported(old)
    assert "understanding.dtype is retired" in caplog.text and "generation.dtype is retired" in caplog.text
    reference = load_exported(export)
    for (name, got), want in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(got, want), name
