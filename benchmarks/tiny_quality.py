"""The embedded default judged as a new user would: train it, evaluate it, print minutes and scores.

    python benchmarks/tiny_quality.py                         # lightbagel-fit recipes/tiny.yaml + lightbagel-eval
    python benchmarks/tiny_quality.py trainer.max_steps=800   # any recipe override, for a score-vs-minutes curve
    python benchmarks/tiny_quality.py --recipe recipes/tiny_pretrained.yaml   # the opt-in two-stage recipe
    python benchmarks/tiny_quality.py --recipe recipes/tiny_pretrained.yaml --vlm outputs/tiny_vlm  # reuse

Wall times are of the whole commands (the VLM stage included unless it is reused) on this machine
as it is: on a shared machine they are pessimistic. Goals (issue 11, 2 CPU cores): the default in
<= 10 minutes, T2I overall >= 0.80 (32 prompts per category), edit >= 0.60, chat (VQA) >= 0.90.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from lightbagel.cli.eval import main as eval_main
from lightbagel.cli.fit import main as fit_main

GOALS = {"synthetic/overall": 0.80, "synthetic/edit": 0.60, "vqa/overall": 0.90}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="KEY=VALUE recipe overrides")
    p.add_argument("--recipe", default="recipes/tiny.yaml")
    p.add_argument("--out", default="outputs/tiny_quality", help="output_dir of the run (wiped first)")
    p.add_argument("--vlm", default=None, help="the VLM stage's output_dir, reused when finished "
                   "(default: <out>_vlm, wiped first, so the time includes the stage)")
    p.add_argument("--per-category", type=int, default=32)
    return p.parse_args(argv)


def timed(command, argv: list[str]) -> float:
    start = time.perf_counter()
    if command(argv) != 0:
        raise SystemExit(f"failed: {' '.join(argv)}")
    return (time.perf_counter() - start) / 60


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    vlm = Path(args.vlm) if args.vlm else out.parent / f"{out.name}_vlm"
    if not args.vlm:
        shutil.rmtree(vlm, ignore_errors=True)
    fit_args = [args.recipe, f"output_dir={out}", f"pretrain.output_dir={vlm}", "trainer.enable_progress_bar=false",
                *args.overrides]
    fit_minutes = timed(fit_main, fit_args)
    eval_minutes = timed(eval_main, [str(out / "export"), "--out", str(out / "eval"),
                                     "--per-category", str(args.per_category)])
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    print(f"\nfit {fit_minutes:.1f} min (VLM stage {'reused if finished' if args.vlm else 'included'}), "
          f"eval {eval_minutes:.1f} min; overrides: {' '.join(args.overrides) or 'none'}")
    for key, goal in GOALS.items():
        value = metrics.get(key, float("nan"))
        print(f"{key}: {value:.3f} (goal >= {goal:.2f}{', met' if value >= goal else ''})")


if __name__ == "__main__":
    main()
