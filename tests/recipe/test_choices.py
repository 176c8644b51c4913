"""One list per set of names: each set a recipe may choose from equals the table the code runs on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightbagel import registry
from lightbagel.backbones.understanding.base import EDIT_LAYOUTS
from lightbagel.cli import eval as eval_cli
from lightbagel.cli import generate
from lightbagel.data.samples import PARSERS
from lightbagel.flow_matching import PREDICTIONS
from lightbagel.fusion.blocks import PER_STREAM_ROTARY
from lightbagel.fusion.mask import BACKENDS
from lightbagel.inference.guidance import RENORM
from lightbagel.inputs import EDIT_HIDES
from lightbagel.packing import LAYOUTS
from lightbagel.precision import PRECISIONS
from lightbagel.recipe import CHOICES, RecipeError, load_recipe
from lightbagel.recipe.checks import REGISTRY_KEYS
from lightbagel.training.module import SCHEDULES
from lightbagel.training.strategy import make_strategy

TINY = Path(__file__).resolve().parents[2] / "recipes" / "tiny.yaml"

# schema.CHOICES key -> the table the code dispatches on for that key.
DISPATCH = {
    "fusion.attention": BACKENDS,
    "data.packing.layout": LAYOUTS,
    "fusion.edit_layout": EDIT_LAYOUTS,
    "fusion.positional": PER_STREAM_ROTARY,
    "objective.edit_condition": EDIT_HIDES,
    "objective.prediction": PREDICTIONS,
    "optim.schedule": SCHEDULES,
    "data.sources[].task": PARSERS,
    "trainer.precision": PRECISIONS,
}
# Closed sets not held to one table here: the single cross-attention mode and data.source (shapes or
# not). The dtype names are not a recipe choice: the precision plan (precision.py) decides storage.
NO_TABLE = {"generation.cross_attention", "data.source"}


def error_of(overrides: list[str]) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(TINY, overrides)
    return str(info.value)


@pytest.mark.parametrize("key", sorted(DISPATCH))
def test_choice_set_equals_its_dispatch_table(key: str) -> None:
    assert sorted(CHOICES[key]) == sorted(DISPATCH[key])


def test_every_choice_set_is_accounted_for() -> None:
    assert set(CHOICES) == set(DISPATCH) | NO_TABLE
    assert not set(CHOICES) & set(REGISTRY_KEYS), "a registry is the one list of its key's names"


@pytest.mark.parametrize("key", sorted(REGISTRY_KEYS))
def test_recipes_accept_exactly_the_registered_names(key: str) -> None:
    names = getattr(registry, REGISTRY_KEYS[key]).names()
    assert names
    for name in names:
        assert OmegaConf.select(load_recipe(TINY, [f"{key}={name}"]).resolved, key) == name
    assert error_of([f"{key}=no_such_name"]).endswith(f"'no_such_name'; allowed: {', '.join(names)}")


def test_every_registered_strategy_builds() -> None:
    tiny = load_recipe(TINY).config.trainer
    for name in registry.STRATEGY.names():
        tiny.strategy = name
        assert make_strategy(tiny) is not None


def test_cross_attention_keep_is_not_offered() -> None:
    assert error_of(["generation.cross_attention=keep"]) == (
        "command line: generation.cross_attention: unknown value 'keep'; allowed: skip"
    )


@pytest.mark.parametrize("main", [generate.generate_main, generate.edit_main, eval_cli.main])
def test_cli_renorm_choices_equal_the_sampler_table(main, capsys: pytest.CaptureFixture) -> None:
    # The CLIs list the modes themselves so that `--help` needs no torch import.
    with pytest.raises(SystemExit):
        main(["--renorm", "bogus"])
    listed = re.search(r"choose from (.*?)\)", capsys.readouterr().err)
    assert listed is not None and sorted(re.findall(r"\w+", listed.group(1))) == sorted(m or "none" for m in RENORM)


def test_a_source_task_names_a_sample_parser() -> None:
    source = "data.sources=[{name: mine, urls: [x.tar], task: %s}]"
    assert load_recipe(TINY, [source % "in_context"]).config.data.sources[0].task == "in_context"
    assert error_of([source % "tti"]) == (
        "command line: data.sources[0].task: unknown value 'tti'; allowed: t2i, edit, und, in_context"
    )
