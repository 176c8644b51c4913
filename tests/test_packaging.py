"""What the wheel ships: every package of src/, and the cards and recipes as package data."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]


def folders(folder: str) -> set[str]:
    """A top-level data folder and its subfolders as the packages pyproject.toml maps them to."""
    return {f"lightbagel.{folder}", *(f"lightbagel.{folder}.{d.name}" for d in (REPO / folder).iterdir() if d.is_dir())}


def test_the_package_list_holds_every_package_and_every_card_and_recipe_folder():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    code = {p.parent.relative_to(REPO / "src").as_posix().replace("/", ".")
            for p in (REPO / "src/lightbagel").rglob("__init__.py")}
    for folder in ("components", "recipes"):
        assert setuptools["package-dir"][f"lightbagel.{folder}"] == folder
    assert set(setuptools["packages"]) == code | folders("components") | folders("recipes")
