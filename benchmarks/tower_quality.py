"""Each pretrained tiny tower against its goal (issue 20), on held-out shapes-world scenes.

    python benchmarks/tower_quality.py vae outputs/tiny_vae/export    # a VAE run's export
    python benchmarks/tower_quality.py vlm outputs/tiny_vlm/export    # a VLM run's export
    python benchmarks/tower_quality.py dit outputs/tiny_dit/export    # a DiT run's export
    python benchmarks/tower_quality.py vae                            # the shipped tower (vae, vlm)

- vae: held-out scenes rendered, encoded and decoded by the codec; the fraction of decoded images
  that pass the exact scorer (data/shapes.py `score`, every check) against the scene, beside the
  fraction of the rendered originals that pass (the scorer's own ceiling). Goal >= 0.98.
- dit: unconditional samples (no guidance, 30 Euler steps) through the DiT and its VAE; the
  fraction in which every object is one clean shape of one colour (data/shapes.py
  `clean_objects`). Goal >= 0.90.
- vlm: exact-match VQA over the six question kinds (evaluation/vqa.py) through the VLM alone.
  Goal >= 0.95.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from lightbagel import shapes
from lightbagel.evaluation.metrics import images_to_batch

REPO = Path(__file__).resolve().parents[1]
GOALS = {"vae": 0.98, "dit": 0.90, "vlm": 0.95}
HELDOUT_SEED = "towers:heldout"  # a stream of its own: the shards draw from data.seed


# With no export, each tower as it ships (src/lightbagel/towers/), through the recipe that uses it.
SHIPPED = {
    "vae": ("recipes/pretrain/tiny_dit.yaml", []),
    "vlm": ("recipes/tiny_vlm.yaml", ["understanding.pretrained=shapes_qwen2_5_vl", "understanding.tokenizer=null"]),
}


def load(tower: str, export: str | None):
    """(model, recipe) of an export, or of the recipe that loads the shipped tower."""
    from lightbagel.model import build_model
    from lightbagel.model_folder import RECIPE, load_exported, resolved_recipe
    from lightbagel.recipe import load_recipe

    if export:
        return load_exported(export).eval(), resolved_recipe(Path(export) / RECIPE)
    if tower not in SHIPPED:
        raise SystemExit(f"no shipped {tower} tower yet: pass an export (outputs/NAME/export)")
    path, overrides = SHIPPED[tower]
    recipe = load_recipe(REPO / path, overrides).config
    return build_model(recipe).eval(), recipe


@torch.no_grad()
def vae_pass_rate(codec, n: int, size: int = 32, batch: int = 64) -> tuple[float, float]:
    """(decoded pass rate, original pass rate) over `n` held-out scenes."""
    rng = random.Random(HELDOUT_SEED)
    scenes = [shapes.sample_scene(rng) for _ in range(n)]
    originals = [shapes.render(scene, size) for scene in scenes]
    decoded = []
    for start in range(0, n, batch):
        images = images_to_batch(originals[start:start + batch], size) * 2 - 1
        out = codec.decode(codec.encode(images))
        decoded += [((img.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy() for img in out]
    passed = sum(shapes.score(img, scene)["overall"] for img, scene in zip(decoded, scenes))
    ceiling = sum(shapes.score(img, scene)["overall"] for img, scene in zip(originals, scenes))
    return passed / n, ceiling / n


def dit_clean_rate(model, recipe, n: int) -> float:
    from lightbagel.inference import LightBagelPipeline

    pipe = LightBagelPipeline(model, recipe)
    config = {"steps": 30, "text_guidance": 1.0, "image_guidance": 1.0}  # unconditional: nothing to guide
    images = pipe([""] * n, config=config, seed=10_000).images
    return sum(shapes.clean_objects(image) for image in images) / n


def vlm_accuracy(model, recipe, per_kind: int) -> float:
    from lightbagel.evaluation.vqa import evaluate_vqa
    from lightbagel.inference import LightBagelPipeline

    report = evaluate_vqa(LightBagelPipeline(model, recipe), per_kind=per_kind, seed=1, progress=False)
    print(report.to_markdown())
    return report.overall


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tower", choices=sorted(GOALS))
    p.add_argument("export", nargs="?", default=None, help="a lightbagel-fit export (default: the shipped towers)")
    p.add_argument("--n", type=int, default=512, help="held-out scenes for the VAE, samples for the DiT "
                   "(default: 512)")
    p.add_argument("--per-kind", type=int, default=32, help="held-out questions per kind for the VLM (default: 32)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    (model, recipe), start = load(args.tower, args.export), time.perf_counter()
    if args.tower == "vae":
        value, ceiling = vae_pass_rate(model.gen.vae, args.n)
        print(f"vae: decoded held-out scenes passing the exact scorer {value:.3f} "
              f"(originals {ceiling:.3f}; n={args.n})")
    elif args.tower == "dit":
        value = dit_clean_rate(model, recipe, args.n)
        print(f"dit: unconditional samples whose every object is one clean shape {value:.3f} (n={args.n})")
    else:
        value = vlm_accuracy(model, recipe, args.per_kind)
        print(f"vlm: VQA accuracy on held-out scenes {value:.3f}")
    goal = GOALS[args.tower]
    print(f"goal >= {goal:.2f}{': met' if value >= goal else ': not met'} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
