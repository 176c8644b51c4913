"""`lightbagel-demo --model DIR`: the web demo (generate, edit, chat) in the browser."""

from __future__ import annotations

import argparse
import sys

from lightbagel.cli.common import Parser, at_boundary, check_device, positive_int
from lightbagel.recipe.schema import DTYPE_NAMES

DEFAULT_MODEL = "outputs/tiny/export"
PROG = "lightbagel-demo"


def parse_args(argv=None) -> argparse.Namespace:
    parser = Parser(prog=PROG, description="Serve a trained model's web demo (gradio): generate, edit, chat.",
                    epilog="example: lightbagel-demo --model outputs/tiny/export, then open http://127.0.0.1:7860")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"lightbagel-fit export dir (default: {DEFAULT_MODEL})")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default=None)
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    parser.add_argument("--port", type=positive_int, default=7860)
    return parser.parse_args(argv)


def serve(args) -> int:
    check_device(args.device)
    try:
        import gradio  # noqa: F401  (the optional extra: a clear message beats an ImportError deep inside)
    except ImportError:
        raise ImportError("the demo needs gradio: pip install 'lightbagel[demo]'") from None
    from lightbagel.demo import build_demo
    from lightbagel.inference import LightBagelPipeline

    pipe = LightBagelPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    build_demo(pipe, title=f"lightbagel: {args.model}").launch(server_name=args.host, server_port=args.port)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return at_boundary(PROG, lambda: serve(args))


if __name__ == "__main__":
    sys.exit(main())
