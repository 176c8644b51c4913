"""`lightbagel-export CKPT OUT_DIR`: a training checkpoint (sharded over any number of ranks, or a
single file) -> `OUT_DIR/model.safetensors` + `recipe.yaml`, `OUT_DIR/ema/` with EMA, and
`OUT_DIR/adapter/` (peft) with merged weights for LoRA runs. Runs on one CPU process."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightbagel.cli.common import add_trust_flag


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lightbagel-export", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint (outputs/NAME/checkpoints/step-*.ckpt) or its directory")
    parser.add_argument("out_dir", help="where model.safetensors and recipe.yaml go")
    add_trust_flag(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    ckpt = Path(args.checkpoint)
    from lightbagel.training.checkpointing import newest_loadable

    if ckpt.is_dir() and not (ckpt / "meta.pt").is_file():  # a checkpoints/ directory: its newest readable one
        newest = newest_loadable(ckpt)
        if newest is None:
            print(f"lightbagel-export: no readable step-*.ckpt checkpoint in {ckpt}", file=sys.stderr)
            return 2
        ckpt = newest
    if not ckpt.exists():
        print(f"lightbagel-export: {ckpt} not found; pass outputs/NAME/checkpoints/step-*.ckpt", file=sys.stderr)
        return 2
    from lightbagel.errors import LightBagelError
    from lightbagel.training.checkpoint_export import export_checkpoint

    try:
        path = export_checkpoint(ckpt, Path(args.out_dir), trust_remote_code=args.trust_remote_code)
    except (FileNotFoundError, KeyError, LightBagelError) as err:
        print(f"lightbagel-export: {err}", file=sys.stderr)
        return 2
    print(f"model: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
