"""Recipe composition: cards, overrides, inheritance and the errors a user sees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightbagel import registry
from lightbagel.recipe import RecipeError, available_cards, available_recipes, load_recipe

CARDS: dict[str, str] = {
    "understanding/u_small.yaml": "adapter: und_a\nconfig: {hidden: 8, layers: 2}\nfreeze: true\n",
    "understanding/u_big.yaml": "adapter: und_b\nconfig: {hidden: 16}\nfreeze: true\n",
    "generation/g.yaml": "adapter: gen_a\nvae: {adapter: vae_a}\n",
    "fusion/f.yaml": "block: double_fusion\ndepth_offset: 0.0\n",
    "data/d.yaml": "source: shapes\nbatch_size: 4\n",
    "trainer/t.yaml": "max_steps: 10\nlog_every_n_steps: 5\n",
}
BASE = """\
name: base
seed: 1
output_dir: out/${name}
understanding: u_small
generation: g
fusion: f
data: d
trainer: {card: t, max_steps: 20}
objective: {timestep_shift: 2.0}
"""


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registries with dummy adapters, so no adapter module has to exist."""
    monkeypatch.setattr(registry, "load_builtins", lambda: None)
    names = {
        "UNDERSTANDING": ("understanding adapter", ["und_a", "und_b"]),
        "GENERATION": ("generation adapter", ["gen_a"]),
        "VAE": ("vae adapter", ["vae_a"]),
        "FUSION": ("fusion block", ["double_fusion"]),
        "STRATEGY": ("trainer strategy", ["auto", "ddp"]),
    }
    for attr, (kind, allowed) in names.items():
        reg: registry.Registry = registry.Registry(kind)
        for name in allowed:
            reg.register(name)(lambda: None)
        monkeypatch.setattr(registry, attr, reg)


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_registry: None) -> Path:
    """tmp_path/{components,recipes}; the working directory, so messages show relative paths."""
    for rel, text in CARDS.items():
        write(tmp_path / "components" / rel, text)
    write(tmp_path / "recipes/base.yaml", BASE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LIGHTBAGEL_COMPONENTS", raising=False)
    # Only this tree's cards: the ones shipped with the package would join every "allowed" list.
    monkeypatch.setattr("lightbagel.recipe.cards.SHIPPED_COMPONENTS", tmp_path / "no_shipped_cards")
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def error_of(path: Path, overrides: tuple = ()) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_merge_order_defaults_card_recipe_cli(tree: Path) -> None:
    recipe = load_recipe(tree / "recipes/base.yaml", ["trainer.max_steps=30", "optim.lr=0.5"])
    trainer = recipe.config.trainer
    assert trainer.max_steps == 30  # card 10 <- recipe 20 <- command line 30
    assert trainer.log_every_n_steps == 5  # card
    assert trainer.sample_steps is None  # schema default: the sampler's per-task one
    assert trainer.card == "t"
    assert recipe.config.objective.timestep_shift == 2.0 and recipe.config.optim.lr == 0.5
    assert recipe.config.understanding.config == {"hidden": 8, "layers": 2}
    assert recipe.sources["trainer"] == str(tree / "components/trainer/t.yaml")
    assert recipe.path == tree / "recipes/base.yaml"


def test_interpolation_is_resolved(tree: Path) -> None:
    recipe = load_recipe(tree / "recipes/base.yaml", ["name=abl"])
    assert recipe.config.output_dir == "out/abl"
    assert recipe.resolved.output_dir == "out/abl"


def test_swap_card_in_recipe_by_one_line(tree: Path) -> None:
    write(tree / "recipes/big.yaml", BASE.replace("understanding: u_small", "understanding: u_big"))
    recipe = load_recipe(tree / "recipes/big.yaml")
    assert recipe.config.understanding.adapter == "und_b"
    assert recipe.config.understanding.card == "u_big"
    assert recipe.sources["understanding"].endswith("u_big.yaml")


def test_swap_card_on_command_line_drops_old_overrides(tree: Path) -> None:
    recipe = load_recipe(tree / "recipes/base.yaml", ["trainer=t", "understanding=u_big"])
    assert recipe.config.understanding.adapter == "und_b"
    assert recipe.config.trainer.max_steps == 10  # the recipe's 20 was for the card it replaced


def test_cli_overrides_open_dict_and_mapping_value(tree: Path) -> None:
    overrides = ["understanding.config.hidden=32", "generation={card: g, freeze: true}"]
    recipe = load_recipe(tree / "recipes/base.yaml", overrides)
    assert recipe.config.understanding.config == {"hidden": 32, "layers": 2}
    assert recipe.config.generation.freeze is True


def test_base_inheritance(tree: Path) -> None:
    child = (
        "base: base.yaml\nname: child\nfusion: {depth_offset: 0.5}\ngeneration: {freeze: true}\n"
    )
    recipe = load_recipe(write(tree / "recipes/child.yaml", child))
    cfg = recipe.config
    assert cfg.name == "child" and cfg.output_dir == "out/child" and cfg.seed == 1
    assert cfg.fusion.card == "f" and cfg.fusion.depth_offset == 0.5
    assert cfg.generation.freeze is True and cfg.generation.adapter == "gen_a"
    assert cfg.trainer.max_steps == 20 and cfg.objective.timestep_shift == 2.0


def test_base_swap_drops_base_overrides_of_that_kind(tree: Path) -> None:
    recipe = load_recipe(write(tree / "recipes/child.yaml", "base: base.yaml\ntrainer: t\n"))
    assert recipe.config.trainer.max_steps == 10


def test_components_from_env_search_path(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = tree / "extra"
    write(extra / "data/far.yaml", "batch_size: 2\n")
    monkeypatch.setenv(
        "LIGHTBAGEL_COMPONENTS", os.pathsep.join([str(tree / "nowhere"), str(extra)])
    )
    recipe = load_recipe(tree / "recipes/base.yaml", ["data=far"])
    assert recipe.config.data.batch_size == 2
    assert "far" in available_cards("data", [tree / "components", extra])


@pytest.mark.parametrize(
    "where, setup, overrides, file",
    [
        (
            "recipe",
            lambda t: write(t / "recipes/base.yaml", BASE.replace("max_steps: 20", "max_stepz: 5")),
            (),
            "recipes/base.yaml",
        ),
        (
            "card",
            lambda t: write(t / "components/trainer/t.yaml", "max_stepz: 5\n"),
            (),
            "components/trainer/t.yaml",
        ),
        ("cli", lambda t: None, ("trainer.max_stepz=5",), "command line"),
    ],
)
def test_unknown_key_names_key_file_and_allowed(
    tree: Path, where: str, setup, overrides, file: str
) -> None:
    setup(tree)
    message = error_of(tree / "recipes/base.yaml", overrides)
    assert message.startswith(f"{file}: unknown key 'trainer.max_stepz'")
    assert "allowed: " in message and "max_steps" in message and "log_every_n_steps" in message


def test_unknown_top_level_key(tree: Path) -> None:
    write(tree / "recipes/base.yaml", BASE + "trainr: t\n")
    message = error_of(tree / "recipes/base.yaml")
    assert message.startswith("recipes/base.yaml: unknown key 'trainr'; allowed: base, data")


@pytest.mark.parametrize(
    "setup, overrides, file",
    [
        (
            lambda t: write(t / "components/trainer/t.yaml", "max_steps: fifty\n"),
            (),
            "components/trainer/t.yaml",
        ),
        (
            lambda t: write(
                t / "recipes/base.yaml", BASE.replace("max_steps: 20", "max_steps: fifty")
            ),
            (),
            "recipes/base.yaml",
        ),
        (lambda t: None, ("trainer.max_steps=fifty",), "command line"),
    ],
)
def test_wrong_type_names_key_and_file(tree: Path, setup, overrides, file: str) -> None:
    setup(tree)
    message = error_of(tree / "recipes/base.yaml", overrides)
    assert message == f"{file}: trainer.max_steps: expected int, got 'fifty'"


def test_wrong_type_for_a_section_and_a_list_item(tree: Path) -> None:
    assert error_of(tree / "recipes/base.yaml", ["trainer.mlflow=5"]) == (
        "command line: trainer.mlflow: expected a mapping, got 5"
    )
    assert "optim.betas[0]: expected float, got 'a'" in error_of(
        tree / "recipes/base.yaml", ["optim.betas=[a]"]
    )


def test_missing_card_lists_allowed(tree: Path) -> None:
    write(tree / "recipes/base.yaml", BASE.replace("understanding: u_small", "understanding: nope"))
    message = error_of(tree / "recipes/base.yaml")
    assert message.startswith(
        "recipes/base.yaml: understanding card 'nope' not found in components/understanding"
    )
    assert message.endswith("allowed: u_big, u_small")
    assert error_of(tree / "recipes/base.yaml", ["understanding=u_small", "data=zzz"]).startswith(
        "command line: data card 'zzz' not found"
    )


def test_kind_without_card(tree: Path) -> None:
    write(tree / "recipes/base.yaml", BASE.replace("data: d\n", "data: {batch_size: 3}\n"))
    message = error_of(tree / "recipes/base.yaml")
    assert message.startswith("recipes/base.yaml: data: no card chosen") and "allowed: d" in message


def test_card_may_not_name_itself(tree: Path) -> None:
    write(tree / "components/data/d.yaml", "card: other\n")
    assert error_of(tree / "recipes/base.yaml").startswith("components/data/d.yaml: data.card:")


@pytest.mark.parametrize("bad", ["trainer.max_steps", "=3", "a..b=1", "trainer max_steps=1"])
def test_bad_override_syntax(tree: Path, bad: str) -> None:
    message = error_of(tree / "recipes/base.yaml", [bad])
    assert message.startswith(f"command line: bad override {bad!r}") and "KEY=VALUE" in message


def test_unknown_adapter_names_the_file_that_set_it(tree: Path) -> None:
    write(tree / "components/understanding/u_small.yaml", "adapter: foo\n")
    assert error_of(tree / "recipes/base.yaml") == (
        "components/understanding/u_small.yaml: understanding.adapter: "
        "unknown understanding adapter 'foo'; allowed: und_a, und_b"
    )
    overrides = ["understanding=u_big", "generation.vae.adapter=nope"]
    message = error_of(tree / "recipes/base.yaml", overrides)
    assert (
        message
        == "command line: generation.vae.adapter: unknown vae adapter 'nope'; allowed: vae_a"
    )


def test_fusion_block_and_strategy_use_their_registries(tree: Path) -> None:
    assert error_of(tree / "recipes/base.yaml", ["fusion.block=x"]) == (
        "command line: fusion.block: unknown fusion block 'x'; allowed: double_fusion"
    )
    registry.FUSION.register("other_block")(lambda: None)
    assert load_recipe(tree / "recipes/base.yaml", ["fusion.block=other_block"]).config.fusion.block == "other_block"
    assert error_of(tree / "recipes/base.yaml", ["trainer.strategy=fsdp"]) == (
        "command line: trainer.strategy: unknown trainer strategy 'fsdp'; allowed: auto, ddp"
    )


def test_closed_choices_and_ranges(tree: Path) -> None:
    write(tree / "components/trainer/t.yaml", "precision: 64-true\n")
    message = error_of(tree / "recipes/base.yaml")
    assert message.startswith(
        "components/trainer/t.yaml: trainer.precision: unknown value '64-true'"
    )
    assert "bf16-mixed" in message
    assert error_of(
        tree / "recipes/base.yaml", ["trainer.precision=32-true", "objective.vit_dropout=1.5"]
    ) == ("command line: objective.vit_dropout: must be in [0, 1], got 1.5")
    write(tree / "recipes/base.yaml", BASE.replace("data: d", "data: {card: d, batch_size: 0}"))
    assert error_of(tree / "recipes/base.yaml", ["trainer.precision=32-true"]) == (
        "recipes/base.yaml: data.batch_size: must be > 0, got 0"
    )


def test_the_longest_allowed_name_loads(tree: Path) -> None:
    assert load_recipe(tree / "recipes/base.yaml", ["name=" + "a" * 100]).config.output_dir == "out/" + "a" * 100


def test_missing_recipe_lists_available(tree: Path) -> None:
    write(tree / "recipes/other.yaml", BASE)
    message = error_of(tree / "recipes/nope.yaml")
    assert message == "recipes/nope.yaml: recipe not found; available in recipes: base, other"
    assert available_recipes(tree / "recipes") == ["base", "other"]


def test_missing_base_and_cycle(tree: Path) -> None:
    write(tree / "recipes/child.yaml", "base: gone.yaml\n")
    assert error_of(tree / "recipes/child.yaml").startswith(
        "recipes/child.yaml: base: recipes/gone.yaml: recipe not found"
    )
    write(tree / "recipes/a.yaml", "base: b.yaml\n")
    write(tree / "recipes/b.yaml", "base: a.yaml\n")
    assert "base cycle" in error_of(tree / "recipes/a.yaml")


def test_yaml_syntax_error_names_file_and_line(tree: Path) -> None:
    write(tree / "recipes/broken.yaml", "name: x\nseed: 0\ntrainer: {card: t\n")
    assert error_of(tree / "recipes/broken.yaml").startswith("recipes/broken.yaml:4: invalid YAML")
    write(tree / "components/data/d.yaml", "batch_size: 4\nbatch_size: 5\n")
    assert error_of(tree / "recipes/base.yaml").startswith("components/data/d.yaml:2: invalid YAML")


def test_bad_interpolation_names_source(tree: Path) -> None:
    assert error_of(tree / "recipes/base.yaml", ["output_dir=${nme}"]).startswith(
        "command line: output_dir:"
    )


def test_flat_params_and_yaml(tree: Path) -> None:
    long = "x" * 800
    recipe = load_recipe(tree / "recipes/base.yaml", [f"understanding.config.note={long}"])
    params = recipe.flat_params()
    assert params["trainer.max_steps"] == "20"
    assert params["trainer.mlflow.experiment"] == "None"  # the recipe family
    assert params["understanding.config.hidden"] == "8"
    assert params["output_dir"] == "out/base"
    assert len(params["understanding.config.note"]) == 500
    assert all(isinstance(v, str) for v in params.values())
    assert OmegaConf.create(recipe.to_yaml()).trainer.max_steps == 20
    assert OmegaConf.is_readonly(recipe.resolved)


def test_real_tiny_recipe() -> None:
    pytest.importorskip("lightbagel.backbones.understanding.qwen2_5_vl")
    try:
        registry.load_builtins()
    except ImportError as exc:
        pytest.skip(f"adapters not importable yet: {exc}")
    recipe = load_recipe(Path(__file__).parents[2] / "recipes/tiny.yaml", ["trainer.max_steps=7"])
    cfg = recipe.config
    assert cfg.name == "tiny" and cfg.output_dir == "outputs/tiny"
    assert cfg.understanding.adapter == "qwen2_5_vl" and cfg.understanding.card == "tiny_qwen2_5_vl"
    assert cfg.generation.vae.adapter == "pixel"
    assert cfg.trainer.max_steps == 7 and cfg.objective.timestep_shift == 1.0


NAME_RULE = "name: must be a folder name of at most 100 letters, digits, '.', '_' or '-', not starting with '.'"


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lr=0", "optim.lr: must be > 0, got 0.0"),
    ("optim.lr=-1e-4", "optim.lr: must be > 0, got -0.0001"),
    ("optim.lr=.inf", "optim.lr: must be > 0, got inf"),
    ("data.num_workers=-1", "data.num_workers: must be >= 0, got -1"),
    ("data.image_size=0", "data.image_size: must be in [1, 4096], got 0"),
    ("data.image_size=100000", "data.image_size: must be in [1, 4096], got 100000"),
    ("data.vit_image_size=100000", "data.vit_image_size: must be in [1, 4096], got 100000"),
    ("optim.min_lr_ratio=-0.5", "optim.min_lr_ratio: must be in [0, 1], got -0.5"),
    ("generation.rope_theta=-1", "generation.rope_theta: must be > 0, got -1.0"),
    ("objective.und_weight=-1", "objective.und_weight: must be >= 0, got -1.0"),
    ("objective.flow_weight=-1", "objective.flow_weight: must be >= 0, got -1.0"),
    ("name=../../x", NAME_RULE + ", got '../../x'"),
    ("name=a/b", NAME_RULE + ", got 'a/b'"),
    ("name=.hidden", NAME_RULE + ", got '.hidden'"),
    ("name=" + "a" * 101, NAME_RULE + ", got '" + "a" * 101 + "'"),
    ("trainer.sample_steps=-5", "trainer.sample_steps: must be > 0, got -5"),
    ("trainer.keep_checkpoints=0", "trainer.keep_checkpoints: must be > 0, got 0"),
    ("optim.betas=[0.9,1.0]", "optim.betas[1]: must be in [0, 1), got 1.0"),
    ("data.sources=[{name: a, weight: -1}]", "data.sources[0].weight: must be >= 0, got -1.0"),
])
def test_values_that_cannot_work_are_rejected_with_key_and_range(tree: Path, override: str, message: str):
    assert error_of(tree / "recipes/base.yaml", [override]) == f"command line: {message}"


def test_optional_keys_left_null_are_not_range_checked(tree: Path) -> None:
    recipe = load_recipe(tree / "recipes/base.yaml", ["trainer.gradient_clip_val=null", "fusion.num_heads=null"])
    assert recipe.config.trainer.gradient_clip_val is None


def test_every_range_key_is_a_schema_key() -> None:
    from lightbagel.recipe.checks import _range_values
    from lightbagel.recipe.schema import RANGES, RecipeConfig

    defaults = OmegaConf.structured(RecipeConfig)
    for pattern in RANGES:
        head = pattern.partition("[]")[0]
        assert OmegaConf.select(defaults, head, default="absent") != "absent", pattern
    assert dict(_range_values(OmegaConf.create({"a": [{"b": 1}, {"b": 2}]}), "a[].b")) == {"a[0].b": 1, "a[1].b": 2}


def test_a_recipe_that_is_not_text_or_is_a_directory(tree: Path) -> None:
    (tree / "recipes/image.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8")
    assert error_of(tree / "recipes/image.yaml") == (
        "recipes/image.yaml: not a text file; a recipe or card is UTF-8 YAML"
    )
    assert error_of(tree / "recipes") == "recipes is a directory; pass a recipe file in it: base, image"
