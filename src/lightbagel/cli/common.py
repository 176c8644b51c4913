"""What every recipe-taking command shares."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from lightbagel.recipe import Recipe, RecipeError, load_recipe


def add_trust_flag(parser: argparse.ArgumentParser) -> None:
    """The only switch that lets a model folder's or checkpoint's own recipe load code (training/export.py)."""
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="honour understanding.trust_remote_code in the model's recipe (runs code the "
                             "model folder points to: only for folders you trust)")


def recipe_or_none(prog: str, path: str, overrides: Sequence[str]) -> Optional[Recipe]:
    """The validated recipe, or None after printing the one-line error (the caller exits 2)."""
    try:
        return load_recipe(path, overrides)
    except RecipeError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return None
