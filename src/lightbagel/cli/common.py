"""What every recipe-taking command shares."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from lightbagel.recipe import Recipe, RecipeError, load_recipe


def recipe_or_none(prog: str, path: str, overrides: Sequence[str]) -> Optional[Recipe]:
    """The validated recipe, or None after printing the one-line error (the caller exits 2)."""
    try:
        return load_recipe(path, overrides)
    except RecipeError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return None
