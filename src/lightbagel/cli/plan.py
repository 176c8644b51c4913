"""`lightbagel-plan RECIPE [--gpus N --nodes M --seq-len L]`: size a recipe's model with no
download and no GPU (the model is built on the meta device from its cards' shipped configs)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from lightbagel.cli.common import Parser, add_threads_flag, at_boundary, positive_int, recipe_or_none, with_overrides


def parse_args(argv=None) -> argparse.Namespace:
    parser = Parser(
        prog="lightbagel-plan",
        description="Parameters per part, FLOPs per packed sequence and per-GPU memory under FSDP2.",
        epilog="example: lightbagel-plan recipes/lightbagel_7b_5b.yaml --gpus 8 --nodes 4 --seq-len 16384",
    )
    parser.add_argument("recipe", help="recipe YAML")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE overrides of any recipe key")
    parser.add_argument("--gpus", type=positive_int, default=None, help="GPUs per node (default: trainer.devices)")
    parser.add_argument("--nodes", type=positive_int, default=None, help="nodes (default: trainer.num_nodes)")
    parser.add_argument("--seq-len", type=positive_int, default=16384,
                        help="tokens per packed sequence (default 16384)")
    parser.add_argument("--text-tokens", type=positive_int, default=128, help="text tokens per sample (default 128)")
    parser.add_argument("--edit-fraction", type=float, default=None,
                        help="share of edit samples (default: data.task_weights)")
    parser.add_argument("--data-sample", type=positive_int, default=None, metavar="BATCHES",
                        help="also count this many batches of the recipe's data pipeline: real-token fraction, "
                             "padded vs packed, and how full the token budget is (reads data.root / data.sources)")
    add_threads_flag(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    recipe = recipe_or_none("lightbagel-plan", args.recipe, args.overrides)
    if recipe is None:
        return 2
    cfg = recipe.config
    from lightbagel.threads import apply_threads

    apply_threads(args.threads, cfg.trainer.num_threads)
    devices = cfg.trainer.devices if isinstance(cfg.trainer.devices, int) else 1
    from lightbagel.planning import format_plan, make_plan  # heavy imports only once the recipe is valid

    def run() -> int:
        plan = make_plan(cfg, args.gpus or devices, args.nodes or cfg.trainer.num_nodes, args.seq_len,
                         args.text_tokens, args.edit_fraction, progress=sys.stderr.isatty(),
                         data_sample=args.data_sample or 0)
        print(format_plan(dataclasses.replace(plan, name=with_overrides(cfg.name, args.overrides))))
        return 0

    return at_boundary("lightbagel-plan", run)


if __name__ == "__main__":
    sys.exit(main())
