"""`lightbagel-fit RECIPE [key=value ...]`: train from a recipe."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from lightbagel.cli.common import Parser, add_threads_flag, at_boundary, recipe_or_none, with_overrides
from lightbagel.recipe import Recipe

DEFAULT_RECIPE = "tiny"  # ./recipes/tiny.yaml in a checkout, else the shipped one


def parse_args(argv=None) -> argparse.Namespace:
    parser = Parser(
        prog="lightbagel-fit",
        description="Train a LightBagel model from a recipe. Overrides are dotted KEY=VALUE pairs.",
        epilog="example: lightbagel-fit recipes/tiny.yaml trainer.max_steps=50 understanding=tiny_qwen2_5_vl",
    )
    parser.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE, help="recipe YAML file or name")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE overrides of any recipe key")
    parser.add_argument("--print-recipe", action="store_true", help="print the resolved recipe and exit")
    parser.add_argument("--fresh", action="store_true",
                        help="start over in a new folder beside the recipe's output_dir (NAME-2, ...), keeping the old")
    parser.add_argument("--list", action="store_true", help="list the recipes and every card per kind, and exit")
    add_threads_flag(parser)
    return parser.parse_intermixed_args(argv)  # flags may sit between overrides


def run_name(recipe: Recipe, overrides: list[str]) -> str:
    """The MLflow run name: the output folder plus the overrides that make this run differ."""
    return with_overrides(Path(recipe.config.output_dir).name, overrides)


def fresh_recipe(args, recipe: Recipe) -> Recipe | None:
    """The recipe again with output_dir moved to a folder that holds no run yet."""
    from lightbagel.runs.folder import fresh_output_dir

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        print("lightbagel-fit: --fresh picks its folder per process; with several processes give name=NAME instead",
              file=sys.stderr)
        return None
    out = fresh_output_dir(Path(recipe.config.output_dir))
    return recipe_or_none("lightbagel-fit", args.recipe, [*args.overrides, f"output_dir={out}"])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        from lightbagel.cli.listing import listing

        print(listing())
        return 0
    recipe = recipe_or_none("lightbagel-fit", args.recipe, args.overrides)
    if recipe is not None and args.fresh:
        recipe = fresh_recipe(args, recipe)
    if recipe is None:
        return 2
    if args.print_recipe:
        print(recipe.to_yaml())
        return 0
    return at_boundary("lightbagel-fit", lambda: train(recipe, args.overrides, args.threads))


def train(recipe: Recipe, overrides: list[str], threads: int | None = None) -> int:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lightbagel.training.fit import fit  # heavy imports only once the recipe is valid

    start = time.perf_counter()
    try:
        result = fit(recipe, run_name(recipe, overrides), threads=threads)
    except SIGTERMException:  # Lightning stops the loop at a step boundary; MLflow has the run as KILLED
        print(f"lightbagel-fit: stopped by SIGTERM; rerun the same command to resume from the newest checkpoint "
              f"in {recipe.config.output_dir}/checkpoints", file=sys.stderr)
        return 143
    minutes = (time.perf_counter() - start) / 60
    if result.first_loss is None:  # resumed from a checkpoint already at max_steps
        print(f"nothing to train: {recipe.config.output_dir} is already at trainer.max_steps")
    else:
        print(f"done in {minutes:.1f} min; loss {result.first_loss:.4f} -> {result.last_loss:.4f}")
    print(f"model: {result.export_path} (-> {result.export_path.resolve().relative_to(result.output_dir.resolve())})")
    if result.tracking_uri:
        print(f"mlflow: run {result.run_id}; open with `mlflow ui --backend-store-uri {result.tracking_uri}`, then "
              f"http://127.0.0.1:5000/#/experiments/{result.experiment_id}/runs/{result.run_id}/model-metrics"
              "?workflowType=machine_learning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
