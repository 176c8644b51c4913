"""Samples/s of the mixture pipeline (2 workers, shapes world at 512 px) against the samples/s the
tiny model (with the paper's 256 tokens per 512 px image) trains on the same batches; prints both
and their ratio (> 1: data keeps up).

    .venv/bin/python benchmarks/data_throughput.py [--samples 192] [--batches 24] [--steps 3]
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import replace
from pathlib import Path

import torch

from lightbagel.data.datamodule import MixtureDataModule
from lightbagel.recipe import load_recipe
from lightbagel.recipe.schema import PackingConfig, ResolutionConfig
from lightbagel.training.module import LightBagelModule

REPO = Path(__file__).resolve().parents[1]
# The tiny model with the paper's token geometry: a 16x space-to-depth codec (Wan2.2's VAE is 16x)
# and a (1, 2, 2) DiT patch, so a 512 px image is 256 tokens, as at full size.
PAPER_GEOMETRY = ["generation.vae.config.factor=16", "generation.config.in_channels=768",
                  "generation.config.out_channels=768", "generation.config.patch_size=[1,2,2]"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=REPO / "outputs" / "bench-shapes-512")
    parser.add_argument("--samples", type=int, default=192, help="shapes samples to render (cached)")
    parser.add_argument("--batches", type=int, default=24, help="batches timed from the pipeline")
    parser.add_argument("--steps", type=int, default=3, help="training steps timed on the tiny model")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--token-budget", type=int, default=16384, help="the paper packs 16K-20K tokens")
    return parser.parse_args()


def data_module(args, module: LightBagelModule) -> MixtureDataModule:
    base = load_recipe(REPO / "recipes" / "tiny.yaml").config.data
    cfg = replace(
        base, num_samples=args.samples, image_size=512, num_workers=args.workers, batch_size=64,
        resolution=ResolutionConfig(vae_min_short=512, vae_max_long=1024, vit_min_short=224, vit_max_long=532,
                                    vit_multiple=8),
        packing=PackingConfig(token_budget=args.token_budget, max_wait=256),
    )
    gen = module.model.gen
    dm = MixtureDataModule(cfg, module.model.und.processor, args.root,
                           vae_multiple=gen.vae_multiple)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def pipeline_rate(dm: MixtureDataModule, batches: int) -> tuple[float, list]:
    loader = iter(dm.train_dataloader())
    kept = [next(loader) for _ in range(2)]  # worker start-up is not throughput
    start, samples = time.perf_counter(), 0
    for batch in itertools.islice(loader, batches):
        samples += len(batch)
        kept.append(batch)
    return samples / (time.perf_counter() - start), kept


def model_rate(module: LightBagelModule, batches: list, steps: int) -> float:
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    module.train()
    module.flow_matching_loss(batches[0])[0].backward()  # warm-up
    optimizer.zero_grad()
    start, samples = time.perf_counter(), 0
    for batch in batches[1 : steps + 1]:
        loss, _ = module.flow_matching_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        samples += len(batch)
    return samples / (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    module = LightBagelModule(load_recipe(REPO / "recipes" / "tiny.yaml", PAPER_GEOMETRY).config)
    dm = data_module(args, module)
    data, batches = pipeline_rate(dm, args.batches)
    sizes = sorted({tuple(b.target.shape[-2:]) for b in batches})
    print(f"pipeline: {data:.1f} samples/s with {args.workers} workers at {sizes} px, "
          f"mean batch {sum(map(len, batches)) / len(batches):.1f} samples (budget {args.token_budget} tokens)")
    model = model_rate(module, batches, args.steps)
    print(f"tiny model: {model:.2f} samples/s (training steps on the same batches, {torch.get_num_threads()} threads)")
    print(f"ratio data/model: {data / model:.1f}x")


if __name__ == "__main__":
    main()
