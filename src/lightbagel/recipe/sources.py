"""Reading recipe sources: YAML files, `base:` chains and command-line overrides, each as a layer."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightbagel.errors import first_line
from lightbagel.recipe.messages import CLI, RecipeError

# Dotted names only: catches "KEY VALUE" typos and a stray "=" before OmegaConf guesses a key.
_OVERRIDE_KEY = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*$")


@dataclass
class Layer:
    source: str  # file shown to the user, or CLI
    data: dict[str, Any]  # recipe-shaped mapping, interpolations unresolved
    kind: str | None = None  # the kind this layer overrides; None for plain keys


RECIPE_SUFFIXES = (".yaml", ".yml")  # what a recipe file may end with (a card is NAME.yaml)


def shipped(folder: str) -> Path:
    """The cards (`components`) or recipes (`recipes`) shipped with lightbagel: package data in an
    installed wheel (pyproject.toml maps the top-level folders into the package), else the
    checkout's own top-level folder (a source tree run with PYTHONPATH=src)."""
    data = resources.files("lightbagel") / folder
    if data.is_dir():
        return Path(str(data))
    return Path(__file__).resolve().parents[3] / folder


SHIPPED_RECIPES = shipped("recipes")


def find_recipe(path: str | Path) -> Path:
    """A recipe file, or a recipe named without folder or suffix (`tiny`): `./recipes/NAME.yaml`
    first, so a project's own recipe wins, then the recipes shipped with lightbagel."""
    path = Path(path)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path
    for folder in (Path("recipes"), SHIPPED_RECIPES):
        for suffix in RECIPE_SUFFIXES:
            if (folder / f"{path}{suffix}").is_file():
                return folder / f"{path}{suffix}"
    known = ", ".join(sorted({*available_recipes("recipes"), *available_recipes(SHIPPED_RECIPES)})) or "(none)"
    raise RecipeError(f"{path}: no recipe of that name in ./recipes or the shipped recipes; available: {known}")


def available_recipes(directory: str | Path) -> list[str]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted({p.stem for p in directory.iterdir() if p.suffix in RECIPE_SUFFIXES})


def show(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def read_yaml(path: Path) -> dict[str, Any]:
    label = show(path)
    try:
        node = OmegaConf.load(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{label}{where}: invalid YAML: {problem}") from None
    except OSError as exc:
        raise RecipeError(f"{label}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{label}: not a text file; a recipe or card is UTF-8 YAML") from None
    if not isinstance(node, DictConfig):
        raise RecipeError(f"{label}: expected a mapping of keys at the top level")
    return OmegaConf.to_container(node, resolve=False)  # type: ignore[return-value]


def read_chain(path: Path) -> list[tuple[Path, Layer]]:
    """The recipe and its bases, base first; `base` keys removed."""
    chain: list[tuple[Path, Layer]] = []
    seen: set = set()
    referrer: str | None = None
    while True:
        where = f"{referrer}: base: " if referrer else ""
        if path.is_dir():
            inside = ", ".join(available_recipes(path)) or "(none)"
            raise RecipeError(f"{where}{show(path)} is a directory; pass a recipe file in it: {inside}")
        if not path.is_file():
            known = ", ".join(available_recipes(path.parent)) or "(none)"
            here = f"available in {show(path.parent)}: {known}"
            raise RecipeError(f"{where}{show(path)}: recipe not found; {here}")
        if path.resolve() in seen:
            raise RecipeError(f"{where}{show(path)} is already in the chain (a base cycle)")
        seen.add(path.resolve())
        data = read_yaml(path)
        base = data.pop("base", None)
        chain.append((path, Layer(show(path), data)))
        if base is None:
            return chain[::-1]
        if not isinstance(base, str):
            raise RecipeError(f"{show(path)}: base: expected a recipe path, got {base!r}")
        referrer, path = show(path), path.parent / base


def parse_override(item: str) -> Layer:
    key, sep, value = item.partition("=")
    if not sep or not _OVERRIDE_KEY.match(key.strip()):
        raise RecipeError(f"{CLI}: bad override {item!r} (expected KEY=VALUE, e.g. trainer.max_steps=50)")
    try:
        parsed = OmegaConf.from_dotlist([f"{key.strip()}={value}"])
    except (yaml.YAMLError, OmegaConfBaseException, ValueError) as exc:
        raise RecipeError(f"{CLI}: bad override {item!r}: {first_line(exc)}") from None
    return Layer(CLI, OmegaConf.to_container(parsed, resolve=False))  # type: ignore[arg-type]
