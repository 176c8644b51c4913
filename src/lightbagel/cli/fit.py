"""`lightbagel-fit RECIPE [key=value ...]`: train from a recipe."""

from __future__ import annotations

import argparse
import sys
import time

from lightbagel.cli.common import recipe_or_none

DEFAULT_RECIPE = "recipes/tiny.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lightbagel-fit",
        description="Train a LightBagel model from a recipe. Overrides are dotted KEY=VALUE pairs.",
        epilog="example: lightbagel-fit recipes/tiny.yaml trainer.max_steps=50 understanding=tiny_qwen2_5_vl",
    )
    parser.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE, help=f"recipe YAML (default: {DEFAULT_RECIPE})")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE overrides of any recipe key")
    parser.add_argument("--print-recipe", action="store_true", help="print the resolved recipe and exit")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    recipe = recipe_or_none("lightbagel-fit", args.recipe, args.overrides)
    if recipe is None:
        return 2
    if args.print_recipe:
        print(recipe.to_yaml())
        return 0
    from lightbagel.errors import LightBagelError, one_line
    from lightbagel.training.fit import fit  # heavy imports only once the recipe is valid

    start = time.perf_counter()
    try:
        result = fit(recipe)
    except LightBagelError as err:
        print(f"lightbagel-fit: {one_line(err)}", file=sys.stderr)
        return 2
    minutes = (time.perf_counter() - start) / 60
    if result.first_loss is None:  # resumed from a checkpoint already at max_steps
        print(f"nothing to train: {recipe.config.output_dir} is already at trainer.max_steps")
    else:
        print(f"done in {minutes:.1f} min; loss {result.first_loss:.4f} -> {result.last_loss:.4f}")
    print(f"model: {result.export_path}")
    if result.tracking_uri:
        print(f"mlflow: run {result.run_id}; open with `mlflow ui --backend-store-uri {result.tracking_uri}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
