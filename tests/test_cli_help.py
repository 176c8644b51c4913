"""Every command's `--help` shows its defaults and a help text per flag, every command has
`--version` and `--threads`, and the sampler has one default per task, used everywhere."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from lightbagel import __version__
from lightbagel.cli.common import DefaultsFormatter
from lightbagel.inference.guidance import TASK_DEFAULTS

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = dict(re.findall(r'^(lightbagel-[\w-]+) = "([\w.:]+)"$', (REPO / "pyproject.toml").read_text(), re.M))


def parsers_of(entry: str, monkeypatch) -> list[argparse.ArgumentParser]:
    """The parser a console script builds (and its sub-command parsers), caught at parse time."""
    module, func = entry.split(":")
    caught = []

    def catch(self, *args, **kwargs):
        caught.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", catch)
    with pytest.raises(SystemExit):
        getattr(importlib.import_module(module), func)([])
    top = caught[0]
    subs = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    return [top, *(p for s in subs for p in s.choices.values())]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_shows_every_flags_text_and_default(script, monkeypatch):
    assert len(SCRIPTS) == 9
    for parser in parsers_of(SCRIPTS[script], monkeypatch):
        assert isinstance(parser.formatter_class(parser.prog), DefaultsFormatter)
        flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
        commands = any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
        wanted = {"--version"} if commands else {"--version", "--threads"}  # a sub-command has --threads
        assert wanted <= {s for a in flags for s in a.option_strings}, parser.prog
        for action in flags:
            shown = DefaultsFormatter(parser.prog)._get_help_string(action)
            assert action.help, f"{parser.prog} {action.option_strings[0]} has no help text"
            if all(action.default is not v for v in (None, False, argparse.SUPPRESS)):
                assert "default" in shown, f"{parser.prog} {action.option_strings[0]} hides its default"


@pytest.mark.parametrize("script", ["lightbagel-fit", "lightbagel-eval", "lightbagel-demo"])
def test_version(script, capsys):
    module, func = SCRIPTS[script].split(":")
    with pytest.raises(SystemExit):
        getattr(importlib.import_module(module), func)(["--version"])
    assert capsys.readouterr().out.strip() == f"{script} {__version__}"


def test_help_text_states_the_per_task_sampler_defaults(capsys):
    from lightbagel.cli import eval as eval_cli
    from lightbagel.cli import generate

    for main in (generate.generate_main, generate.edit_main, eval_cli.main):
        with pytest.raises(SystemExit):
            main(["--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert f"sampling steps (default: {TASK_DEFAULTS['t2i']['steps']})" in text
        assert f"{TASK_DEFAULTS['edit']['image_guidance']} edit" in text


def test_generate_eval_demo_and_training_grids_use_the_one_default_per_task(tiny_model, tiny_recipe):
    import gradio as gr

    from lightbagel.cli import eval as eval_cli
    from lightbagel.cli.generate import sampler_overrides
    from lightbagel.demo import _sampling
    from lightbagel.inference import LightBagelPipeline
    from lightbagel.inference.sampler import SamplerConfig
    from lightbagel.recipe import load_recipe
    from lightbagel.training.fit import sample_steps

    pipe = LightBagelPipeline(tiny_model, tiny_recipe.config)
    given = sampler_overrides(eval_cli.parse_args([]))
    assert given == {"use_cache": True}  # nothing set: every sampler value comes from TASK_DEFAULTS
    for task, defaults in TASK_DEFAULTS.items():
        config = pipe.default_config(task, **given)
        assert {k: getattr(config, k) for k in defaults} == defaults
    assert SamplerConfig().steps == TASK_DEFAULTS["t2i"]["steps"]
    for recipe in ("tiny.yaml", "lightbagel_7b_5b.yaml"):
        assert sample_steps(load_recipe(REPO / "recipes" / recipe).config.trainer) == TASK_DEFAULTS["t2i"]["steps"]
    with gr.Blocks():
        t2i, edit = _sampling(gr), _sampling(gr, image_guidance=True)
    assert [c.value for c in t2i[1:]] == [TASK_DEFAULTS["t2i"][k] for k in ("steps", "text_guidance")]
    assert [c.value for c in edit[1:]] == [TASK_DEFAULTS["edit"][k] for k in ("steps", "text_guidance",
                                                                               "image_guidance")]
