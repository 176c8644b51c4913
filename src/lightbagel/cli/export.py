"""`lightbagel-export CKPT OUT_DIR`: turn a training checkpoint into a model that loads anywhere.

The checkpoint may be sharded over any number of ranks or a single file. Writes
`OUT_DIR/model.safetensors` + `recipe.yaml`, `OUT_DIR/ema/` when the run kept an EMA, and
`OUT_DIR/adapter/` (peft) with merged weights for LoRA runs. Runs on one CPU process.

With `--tower PART` it reads an export instead and writes one trained tower of it as a
`from_pretrained` folder in bf16 (how the shipped tiny towers are made: docs/tiny.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightbagel.cli.common import CliError, Parser, add_threads_flag, add_trust_flag, at_boundary
from lightbagel.training.towers import PARTS

PROG = "lightbagel-export"


def parse_args(argv=None) -> argparse.Namespace:
    parser = Parser(prog=PROG, description=__doc__.split(": ", 1)[1].replace("\n", " "),
                    epilog="example: lightbagel-export outputs/tiny/checkpoints outputs/tiny/export-latest")
    parser.add_argument("checkpoint", help="a checkpoint (outputs/NAME/checkpoints/step-*.ckpt) or its directory; "
                        "with --tower, an export (outputs/NAME/export)")
    parser.add_argument("out_dir", help="where model.safetensors and recipe.yaml go; with --tower, the tower folder")
    parser.add_argument("--tower", choices=PARTS, default=None,
                        help="write this tower of an export as a from_pretrained folder (default: off)")
    add_trust_flag(parser)
    add_threads_flag(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from lightbagel.threads import apply_threads

    args = parse_args(argv)
    apply_threads(args.threads)
    if args.tower:
        return at_boundary(PROG, lambda: export_tower(Path(args.checkpoint), args.tower, Path(args.out_dir),
                                                      args.trust_remote_code))
    return at_boundary(PROG, lambda: export(Path(args.checkpoint), Path(args.out_dir), args.trust_remote_code))


def export_tower(export_dir: Path, part: str, out_dir: Path, trust_remote_code: bool = False) -> int:
    from lightbagel.model_folder import load_exported
    from lightbagel.training.towers import save_tower

    if out_dir.exists():
        raise CliError(f"{out_dir} exists; a tower folder is never replaced in place: remove it or pick another")
    model = load_exported(export_dir, trust_remote_code=trust_remote_code)
    print(f"tower {part}: {save_tower(model, part, out_dir)}")
    return 0


def export(ckpt: Path, out_dir: Path, trust_remote_code: bool = False) -> int:
    from lightbagel.training.checkpointing import META, newest_loadable

    if ckpt.is_dir() and not (ckpt / META).is_file():  # a checkpoints/ directory: its newest readable one
        newest = newest_loadable(ckpt)
        if newest is None:
            raise CliError(f"no readable step-*.ckpt checkpoint in {ckpt}")
        ckpt = newest
    if not ckpt.exists():
        raise CliError(f"{ckpt} not found; pass outputs/NAME/checkpoints/step-*.ckpt")
    from lightbagel.model_folder import write_info
    from lightbagel.training.checkpoint_export import export_checkpoint

    print(f"model: {export_checkpoint(ckpt, out_dir, trust_remote_code=trust_remote_code)}")
    if ckpt.name.startswith("step-") and ckpt.name[5:13].isdigit():  # the export knows its step
        write_info(out_dir, step=int(ckpt.name[5:13]), checkpoint=str(ckpt.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
