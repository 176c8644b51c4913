"""Finding things: `lightbagel-fit --list`, cards found from any folder, `lightbagel-data render`,
and docs that every cite in the repository points at."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from PIL import Image

from lightbagel import shapes
from lightbagel.cli import data as data_cli
from lightbagel.cli import fit as fit_cli
from lightbagel.recipe import load_recipe
from lightbagel.recipe.schema import KINDS
from lightbagel.shapes.captions import scene_from_caption

REPO = Path(__file__).resolve().parents[1]


def test_list_shows_every_recipe_and_card_with_its_description(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert fit_cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    for recipe in (REPO / "recipes").rglob("*.yaml"):
        assert recipe.relative_to(REPO / "recipes").as_posix() in out
    for kind in KINDS:
        assert f"  {kind}:" in out
        for card in (REPO / "components" / kind).glob("*.yaml"):
            first = card.read_text().splitlines()[0].lstrip("# ")[:30]
            assert re.search(rf"^    {card.stem} +{re.escape(first)}", out, re.M), card


def test_list_shows_yml_recipes_too(tmp_path):
    from lightbagel.cli.listing import listing

    (tmp_path / "mine.yml").write_text("# My own recipe. Short.\nbase: tiny.yaml\n")
    (tmp_path / "notes.txt").write_text("not a recipe")
    out = listing(tmp_path)
    assert "  mine.yml  My own recipe" in out and "notes.txt" not in out


def test_cards_ship_with_the_package_and_a_project_card_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # far from the repository: no components/ beside the recipe
    monkeypatch.delenv("LIGHTBAGEL_COMPONENTS", raising=False)
    recipe = tmp_path / "elsewhere" / "mine.yaml"
    recipe.parent.mkdir()
    recipe.write_text((REPO / "recipes" / "tiny.yaml").read_text())
    assert load_recipe(recipe).config.trainer.max_steps == 1500  # the shipped cpu card
    own = tmp_path / "components" / "trainer" / "cpu.yaml"
    own.parent.mkdir(parents=True)
    own.write_text((REPO / "components/trainer/cpu.yaml").read_text().replace("max_steps: 1500", "max_steps: 7"))
    loaded = load_recipe(recipe)
    assert loaded.config.trainer.max_steps == 7 and loaded.sources["trainer"] == str(own.resolve())


def test_render_draws_the_caption_it_is_given(tmp_path):
    rng = random.Random(0)
    for _ in range(50):  # every caption the shapes world writes parses back to the same caption
        text = shapes.caption(shapes.sample_scene(rng))
        assert shapes.caption(scene_from_caption(text)) == text
    out = tmp_path / "scene.png"
    assert data_cli.main(["render", "a red circle left of a blue square", str(out), "--size", "64"]) == 0
    image = Image.open(out)
    assert image.size == (64, 64)
    assert shapes.score(image, scene_from_caption("a red circle left of a blue square"))["overall"]
    assert not shapes.score(image, scene_from_caption("a red circle right of a blue square"))["overall"]


def test_a_caption_outside_the_world_names_the_grammar():
    with pytest.raises(ValueError, match="colors: red.*shapes: circle"):
        scene_from_caption("a pink circle")


def test_every_cited_doc_exists_and_none_cites_an_absent_design_note():
    texts = [p.read_text() for pattern in ("src/**/*.py", "components/*/*.yaml", "recipes/**/*.yaml", "docs/*.md")
             for p in REPO.glob(pattern)] + [(REPO / "README.md").read_text()]
    cited = {m for text in texts for m in re.findall(r"docs/[\w-]+\.md", text)}
    assert "docs/design.md" in cited
    assert [c for c in cited if not (REPO / c).is_file()] == []
    assert not [t for t in texts if "DESIGN.md" in t]
