"""`lightbagel-fit --list`: the recipes beside you and every card per kind, one line each."""

from __future__ import annotations

from pathlib import Path

from lightbagel.recipe.compose import component_search_path
from lightbagel.recipe.schema import KINDS
from lightbagel.recipe.sources import RECIPE_SUFFIXES, SHIPPED_RECIPES

_WIDTH = 96


def describe(path: Path) -> str:
    """The first sentence of a YAML file's leading comment, on one line."""
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        words.append(line.lstrip("#").strip())
    text = " ".join(words)
    text = text.split(". ")[0].rstrip(".:,")
    return text if len(text) <= _WIDTH else text[: _WIDTH - 3] + "..."


def recipe_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.suffix in RECIPE_SUFFIXES) if directory.is_dir() else []


def cards(kind: str, search_path: list[Path]) -> dict[str, Path]:
    """Card name -> the file a recipe gets (the first directory holding it wins)."""
    found: dict[str, Path] = {}
    for directory in search_path:
        for card in sorted((directory / kind).glob("*.yaml")):
            found.setdefault(card.stem, card)
    return found


def recipe_lines(directory: Path) -> list[str]:
    files = recipe_files(directory)
    names = [p.relative_to(directory).as_posix() for p in files]
    width = max(map(len, names), default=0)
    return [f"  {name:{width}s}  {describe(p)}" for name, p in zip(names, files)] or ["  (none)"]


def listing(recipes_dir: Path = Path("recipes")) -> str:
    lines = [f"recipes in {recipes_dir}/:", *recipe_lines(recipes_dir)]
    if recipes_dir.resolve() != SHIPPED_RECIPES.resolve():
        lines += ["recipes shipped with lightbagel (by name, e.g. `lightbagel-fit tiny`):",
                  *recipe_lines(SHIPPED_RECIPES)]
    search_path = component_search_path([])
    lines.append("cards (searched in " + ", ".join(str(d) for d in search_path) + "):")
    for kind in KINDS:
        lines.append(f"  {kind}:")
        lines += [f"    {name:20s}  {describe(path)}" for name, path in cards(kind, search_path).items()]
    lines.append("use a card in a recipe (`generation: NAME`) or on the command line (`generation=NAME`)")
    return "\n".join(lines)
