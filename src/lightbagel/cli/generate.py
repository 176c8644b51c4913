"""`lightbagel-generate`, `lightbagel-edit`, `lightbagel-chat`: use a trained model.

Each image run writes PNGs plus `settings.json` (prompts, seeds, sampler settings, model dir)
and `preview.png`, the images side by side enlarged to be seen (a tiny model's are 32 px).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lightbagel.cli.common import (
    CliError,
    Parser,
    add_device_flag,
    add_threads_flag,
    add_trust_flag,
    at_boundary,
    check_device,
    positive_float,
    positive_int,
)
from lightbagel.inference.guidance import TASK_DEFAULTS
from lightbagel.progress import track
from lightbagel.recipe.schema import DTYPE_NAMES

DEFAULT_MODEL = "outputs/tiny/export"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="lightbagel-fit export dir")
    add_device_flag(parser)
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default=None,
                        help="compute dtype (default: the training one); VAE and rotary tables stay fp32")
    add_trust_flag(parser)
    add_threads_flag(parser)


def _sampling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None,
                        help="output directory (default: a new outputs/generated/run-NNNN, never overwriting)")
    parser.add_argument("--seed", type=int, default=0, help="image k of the run uses seed + k")
    parser.add_argument("--num-images", type=positive_int, default=1, help="images per prompt")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images sampled in one forward")
    parser.add_argument("--size", type=positive_int, default=None,
                        help="square side in pixels (default: the recipe's; an edit follows its source's aspect)")
    sampler_args(parser)


def task_default(key: str) -> str:
    """`default: 30` when both tasks agree, else `default: 1.0 text-to-image, 2.0 edit` (TASK_DEFAULTS)."""
    t2i, edit = TASK_DEFAULTS["t2i"][key], TASK_DEFAULTS["edit"][key]
    show = lambda v: " ".join(map(str, v)) if isinstance(v, tuple) else str(v)
    return f"default: {show(t2i)}" if t2i == edit else f"default: {show(t2i)} text-to-image, {show(edit)} edit"


def sampler_args(parser: argparse.ArgumentParser) -> None:
    """The sampler flags `sampler_overrides` reads (lightbagel-generate, -edit, -eval). Unset ones
    take the per-task defaults, held once in inference/guidance.py (docs/inference.md)."""
    parser.add_argument("--steps", type=positive_int, default=None, help=f"sampling steps ({task_default('steps')})")
    parser.add_argument("--shift", type=positive_float, default=None,
                        help="timestep shift (default: the training shift)")
    parser.add_argument("--cfg-text", type=positive_float, default=None,
                        help=f"text guidance; 1 turns it off ({task_default('text_guidance')})")
    parser.add_argument("--cfg-image", type=positive_float, default=None,
                        help=f"image guidance (editing); 1 turns it off ({task_default('image_guidance')})")
    parser.add_argument("--cfg-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                        help=f"flow times that get guidance ({task_default('guidance_interval')})")
    parser.add_argument("--renorm", choices=("global", "channel", "text_channel", "none"), default=None,
                        help=f"guided-velocity renormalisation ({task_default('renorm')})")
    parser.add_argument("--renorm-min", type=float, default=None,
                        help="lowest renorm ratio (default: 0.0)")
    parser.add_argument("--no-cache", action="store_true", help="recompute the understanding side every step")


def _pipeline(args):
    from lightbagel.inference import LightBagelPipeline
    from lightbagel.threads import apply_threads

    check_device(args.device)
    pipe = LightBagelPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                              trust_remote_code=args.trust_remote_code)
    apply_threads(args.threads, pipe.recipe.trainer.num_threads)
    return pipe


def sampler_overrides(args) -> dict:
    """The sampler options given on the command line, over the pipeline's per-task defaults."""
    given = dict(steps=args.steps, shift=args.shift, text_guidance=args.cfg_text, image_guidance=args.cfg_image,
                 guidance_interval=tuple(args.cfg_interval) if args.cfg_interval else None,
                 renorm=args.renorm, renorm_min=args.renorm_min, use_cache=not args.no_cache)
    overrides = {k: v for k, v in given.items() if v is not None}
    if overrides.get("renorm") == "none":
        overrides["renorm"] = None
    return overrides


def run_images(pipe, args, prompts: list[str], sources: list[list]) -> list[Path]:
    """Samples every (prompt, sources) pair `--num-images` times in batches; writes PNGs + JSON."""
    cfg = sampler_overrides(args)
    jobs = [(p, s, k) for p, s in zip(prompts, sources) for k in range(args.num_images)]
    out = Path(args.out) if args.out else _fresh_dir(Path("outputs/generated"))
    out.mkdir(parents=True, exist_ok=True)
    args.out = str(out)
    written, records, samplers = [], [], {}
    starts = range(0, len(jobs), args.batch_size)
    for start in track(starts, len(starts), "batch", enabled=len(starts) > 1):
        chunk = jobs[start:start + args.batch_size]
        seeds = [args.seed + start + i for i in range(len(chunk))]
        result = pipe([j[0] for j in chunk], images=[j[1] for j in chunk], height=args.size, width=args.size,
                      config=cfg, seed=seeds, progress=sys.stderr.isatty())
        samplers.update(result.settings["sampler"])
        for i, (image, (prompt, srcs, _)) in enumerate(zip(result.images, chunk)):
            path = out / f"{start + i:05d}.png"
            image.save(path)
            written.append(path)
            records.append({"file": path.name, "prompt": prompt, "seed": seeds[i], "num_sources": len(srcs),
                            "size": list(image.size)})
    settings = {"model": str(args.model), "sampler": samplers, "images": records}
    (out / "settings.json").write_text(json.dumps(settings, indent=2))
    preview(written).save(out / PREVIEW)
    return written


PREVIEW, PREVIEW_SIDE, PREVIEW_MAX = "preview.png", 256, 16


def preview(paths: list[Path]):
    """The first images side by side, each enlarged (nearest) to at least PREVIEW_SIDE pixels."""
    from PIL import Image

    from lightbagel.data.images import enlarged

    shown = [enlarged(Image.open(p), PREVIEW_SIDE) for p in paths[:PREVIEW_MAX]]
    strip = Image.new("RGB", (sum(im.width for im in shown), max(im.height for im in shown)), (255, 255, 255))
    x = 0
    for im in shown:
        strip.paste(im, (x, 0))
        x += im.width
    return strip


def _write_images(prog: str, args, jobs) -> int:
    """Runs `jobs()` -> (prompts, sources per prompt) through the pipeline; one-line errors."""

    def run() -> int:
        prompts, sources = jobs()
        for i, prompt in enumerate(prompts, 1):
            if not prompt.strip():
                raise CliError(f"prompt {i} is empty; write what to draw (or to change) in quotes")
        paths = run_images(_pipeline(args), args, prompts, sources)
        print(f"wrote {len(paths)} images, settings.json and {PREVIEW} (enlarged) to {args.out}")
        return 0

    return at_boundary(prog, run)


def _open_images(paths: list[str]) -> list:
    """Each --image as RGB; its size is read from the header first, so an image larger than the
    training data's limit (a decompression bomb) is refused before it is decoded."""
    from lightbagel.data.samples import BadSample, open_image
    from lightbagel.recipe.schema import ResolutionConfig

    try:
        return [open_image(Path(p).read_bytes(), ResolutionConfig.max_image_pixels, p) for p in paths]
    except BadSample as err:  # "reason: file: detail"
        raise CliError(f"--image {str(err).split(': ', 1)[1]}") from None


def _fresh_dir(root: Path) -> Path:
    """The next unused numbered folder under `root`, so one run never overwrites another's images."""
    taken = [int(p.name[4:]) for p in root.glob("run-*") if p.name[4:].isdigit()]
    return root / f"run-{max(taken, default=0) + 1:04d}"


def generate_main(argv=None) -> int:
    parser = Parser(prog="lightbagel-generate", description="Text-to-image with a trained model.",
                                     epilog='example: lightbagel-generate "a red circle left of a blue square"')
    parser.add_argument("prompts", nargs="*", help="prompts (or --prompt-file)")
    parser.add_argument("--prompt-file", help="text file, one prompt per line")
    _common(parser)
    _sampling(parser)
    args = parser.parse_args(argv)

    def jobs():
        prompts = list(args.prompts)
        if args.prompt_file:
            prompts += [line.strip() for line in Path(args.prompt_file).read_text().splitlines() if line.strip()]
        if not prompts:
            raise CliError("no prompt given; pass one in quotes or --prompt-file FILE")
        return prompts, [[] for _ in prompts]

    return _write_images(parser.prog, args, jobs)


def edit_main(argv=None) -> int:
    parser = Parser(prog="lightbagel-edit", description="Instruction editing of source images.",
                                     epilog='example: lightbagel-edit --image scene.png "make the circle green"')
    parser.add_argument("instruction", help="the edit instruction")
    parser.add_argument("--image", action="append", required=True,
                        help="source image; repeat for several sources of one edit "
                             "(a test scene: lightbagel-data render)")
    _common(parser)
    _sampling(parser)
    args = parser.parse_args(argv)
    return _write_images(parser.prog, args, lambda: ([args.instruction], [_open_images(args.image)]))


def chat_main(argv=None) -> int:
    parser = Parser(prog="lightbagel-chat", description="Ask questions about images (VLM path).",
                                     epilog='example: lightbagel-chat --image scene.png "how many objects are there"')
    parser.add_argument("questions", nargs="*", help="questions; none: read one per line from stdin")
    parser.add_argument("--image", action="append", required=True,
                        help="image to ask about; repeatable (a test scene: lightbagel-data render)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64, help="longest answer, in tokens")
    _common(parser)
    args = parser.parse_args(argv)
    return at_boundary(parser.prog, lambda: _chat(args))


def _chat(args) -> int:
    images = _open_images(args.image)
    pipe = _pipeline(args)
    interactive = not args.questions
    questions = args.questions or _stdin_lines()
    for question in questions:
        answer = pipe.understand(question, images, max_new_tokens=args.max_new_tokens)
        print(answer if interactive else f"Q: {question}\nA: {answer}", flush=True)
    return 0


def _stdin_lines():
    if sys.stdin.isatty():
        print("ask a question per line; Ctrl-D ends", file=sys.stderr)
    for line in sys.stdin:
        if line.strip():
            yield line.strip()


if __name__ == "__main__":
    sys.exit(generate_main())
