"""`lightbagel-data`: turn your own images into shards, and inspect a recipe's data mixture.

    lightbagel-data images FOLDER OUT          # IMAGE + IMAGE.txt caption pairs -> t2i shards
    lightbagel-data edits EDITS.jsonl OUT      # {"source", "instruction", "target"} lines -> edit shards
    lightbagel-data inspect RECIPE [KEY=VALUE ...] [--grid grid.png]
    lightbagel-data render "a red circle left of a blue square" scene.png   # a test input
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightbagel.cli.common import Parser, add_threads_flag, at_boundary, positive_int
from lightbagel.recipe import load_recipe


def parse_args(argv=None) -> argparse.Namespace:
    parser = Parser(prog="lightbagel-data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    images = sub.add_parser("images", help="a folder of images with IMAGE.txt captions -> t2i shards")
    images.add_argument("folder", type=Path, help="folder of images, each with IMAGE.txt beside it")
    images.add_argument("out", type=Path, help="folder the shards are written to")
    edits = sub.add_parser("edits", help="a JSONL of edit triples -> edit shards")
    edits.add_argument("jsonl", type=Path, help='lines of {"source", "instruction", "target"}')
    edits.add_argument("out", type=Path, help="folder the shards are written to")
    for p in (images, edits):
        p.add_argument("--per-shard", type=positive_int, default=1000, help="samples per shard (default 1000)")
        p.add_argument("--prefix", default=None, help="shard name prefix (default: t2i or edit)")
    inspect = sub.add_parser("inspect", help="counts per source, a sample grid, token lengths")
    inspect.add_argument("recipe", type=Path, help="recipe YAML")
    inspect.add_argument("overrides", nargs="*", help="KEY=VALUE recipe overrides")
    inspect.add_argument("--grid", type=Path, default=None, help="write a sample grid PNG here")
    inspect.add_argument("--vae-multiple", type=positive_int, default=None,
                         help="pixels per VAE token side (default: the card's, else the recipe's DiT and VAE)")
    render = sub.add_parser("render", help="draw a shapes-world caption as a PNG (an input for edit and chat)")
    render.add_argument("caption", help='e.g. "a red circle left of a blue square"')
    render.add_argument("out", type=Path, help="PNG to write")
    render.add_argument("--size", type=positive_int, default=256, help="square side in pixels")
    for p in (images, edits, inspect, render):
        add_threads_flag(p)
    return parser.parse_args(argv)


def render(args) -> int:
    from lightbagel.shapes import render as draw
    from lightbagel.shapes.captions import scene_from_caption

    image = draw(scene_from_caption(args.caption), args.size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    print(f"wrote {args.out.resolve()} ({args.size}x{args.size})")
    return 0


def convert(args) -> int:
    from lightbagel.data.convert import edit_samples, image_caption_samples, materialise, write_shards

    if args.command == "images":
        samples, uncaptioned = image_caption_samples(args.folder)
        if uncaptioned:
            print(f"lightbagel-data: left out {uncaptioned} image(s) without a .txt caption", file=sys.stderr)
    else:
        samples = edit_samples(args.jsonl)
    prefix = args.prefix or ("t2i" if args.command == "images" else "edit")
    left_out: list[str] = []
    shards = write_shards(materialise(samples, left_out), args.out, prefix, args.per_shard, len(samples))
    if left_out:
        print(f"lightbagel-data: left out {len(left_out)} sample(s) whose image is not a readable image, "
              f"first {left_out[0]}", file=sys.stderr)
    print(f"wrote {len(samples) - len(left_out)} samples in {len(shards)} shards: {args.out}/{prefix}-*.tar")
    return 0


def vae_multiple(recipe) -> int:
    """Pixels per VAE token side of the recipe's generation model, as training counts them
    (VAE factor x DiT patch), from a weightless build on the meta device."""
    import torch

    from lightbagel.model import without_weights
    from lightbagel.registry import GENERATION

    with torch.device("meta"):
        gen = GENERATION.get(recipe.generation.adapter)(without_weights(recipe).generation)
    return gen.vae_multiple


def inspect(args) -> int:
    from lightbagel.data.convert import histogram, inspect_mixture, sample_grid
    from lightbagel.data.datamodule import MixtureDataModule

    recipe = load_recipe(args.recipe, args.overrides)
    cfg = recipe.config.data
    dm = MixtureDataModule(cfg, processor=None)  # no model is built to read shards
    sources = dm._resolve_sources()
    multiple = cfg.resolution.vae_multiple or args.vae_multiple or vae_multiple(recipe.config)
    report = inspect_mixture(cfg, {s.name: list(s.urls) for s in sources}, multiple)
    for source in sources:
        entry = report["sources"][source.name]
        print(f"{source.name}: weight {source.weight:g}, {len(source.urls)} shards, "
              f"samples {entry['tasks']}, skipped {entry['skipped'] or 'none'}")
    for stage in cfg.stages:
        print(f"stage from step {stage.start_step}: weights {dict(stage.weights)}")
    print(f"tokens per sample (VAE multiple {multiple}):\n{histogram(report['tokens'])}")
    if args.grid is not None and report["examples"]:
        sample_grid(report["examples"]).save(args.grid)
        print(f"sample grid: {args.grid}")
    return 0


COMMANDS = {"images": convert, "edits": convert, "inspect": inspect, "render": render}


def main(argv=None) -> int:
    from lightbagel.threads import apply_threads

    args = parse_args(argv)
    apply_threads(args.threads)
    return at_boundary("lightbagel-data", lambda: COMMANDS[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
