"""`lightbagel-demo --model DIR`: the web demo (generate, edit, chat) in the browser."""

from __future__ import annotations

import argparse
import sys

from lightbagel.cli.common import Parser, add_device_flag, add_threads_flag, at_boundary, check_device, positive_int
from lightbagel.recipe.schema import DTYPE_NAMES

DEFAULT_MODEL = "outputs/tiny/export"
PROG = "lightbagel-demo"


def parse_args(argv=None) -> argparse.Namespace:
    parser = Parser(prog=PROG, description="Serve a trained model's web demo (gradio): generate, edit, chat.",
                    epilog="example: lightbagel-demo --model outputs/tiny/export, then open http://127.0.0.1:7860")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="lightbagel-fit export dir")
    add_device_flag(parser)
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default=None,
                        help="compute dtype (default: the training one); VAE and rotary tables stay fp32")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    parser.add_argument("--port", type=positive_int, default=7860, help="port to serve on")
    parser.add_argument("--share", action="store_true",
                        help="also serve on a public gradio.live link (gradio's share tunnel: anyone with the "
                             "link can use the model)")
    add_threads_flag(parser)
    return parser.parse_args(argv)


def serve(args) -> int:
    check_device(args.device)
    try:
        import gradio  # noqa: F401  (the optional extra: a clear message beats an ImportError deep inside)
    except ImportError:
        raise ImportError("the demo needs gradio: pip install 'lightbagel[demo]'") from None
    from lightbagel.demo import build_demo
    from lightbagel.inference import LightBagelPipeline
    from lightbagel.threads import apply_threads

    pipe = LightBagelPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    apply_threads(args.threads, pipe.recipe.trainer.num_threads)
    build_demo(pipe, title=f"lightbagel: {args.model}").launch(server_name=args.host, server_port=args.port,
                                                               share=args.share)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return at_boundary(PROG, lambda: serve(args))


if __name__ == "__main__":
    sys.exit(main())
