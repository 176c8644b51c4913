"""Recipes: typed schema (schema.py) and composition of cards + overrides (compose.py)."""

from lightbagel.recipe.compose import (
    Recipe,
    RecipeError,
    available_cards,
    available_recipes,
    component_search_path,
    load_recipe,
)
from lightbagel.recipe.schema import CHOICES, KINDS, RecipeConfig

__all__ = [
    "CHOICES",
    "KINDS",
    "Recipe",
    "RecipeConfig",
    "RecipeError",
    "available_cards",
    "available_recipes",
    "component_search_path",
    "load_recipe",
]
