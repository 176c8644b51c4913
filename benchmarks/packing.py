"""Padded vs packed training batches (docs/data.md, `data.packing.layout`), side by side in one run.

(a) At the paper's geometry (recipes/lightbagel_7b_5b.yaml: VAE images 512-1024 px, 32 px per DiT
token; ViT images 224-532 px, 28 px per token; a 70/30 T2I/edit mix; rows sent at 16,384 tokens,
never past 20,480): synthetic native image sizes and caption lengths go through the real
`ResolutionPolicy` and `Bucketer`, one VAE size per batch and packed rows of every size side by
side, and each batch is counted as the trainer computes it: padded (prompts padded to the longest,
a source slot for every sample once one sample is an edit; one padded batch per size) or packed
(real tokens only).
Condition dropout is left out here (packed rows also skip dropped tokens; padded ones do not).
(b) The tiny model (recipes/tiny.yaml) trained on batches of its own mixture pipeline (shapes
world, T2I and edits): forward + backward + AdamW step per batch in both layouts, from the same
initial weights with the same per-sample draws, interleaved batch by batch (the order alternates),
each batch stepped `--repeats` times per layout and the fastest step counted.

    .venv/bin/python benchmarks/packing.py [--samples 20000] [--batches 16] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from lightbagel.data.buckets import Bucketer, Pending, ResolutionPolicy
from lightbagel.data.datamodule import MixtureDataModule
from lightbagel.model import build_model
from lightbagel.recipe import load_recipe
from lightbagel.training.module import LightBagelModule
from lightbagel.training.randomness import sample_seeds

REPO = Path(__file__).resolve().parents[1]
PAPER, TINY = REPO / "recipes" / "lightbagel_7b_5b.yaml", REPO / "recipes" / "tiny.yaml"
PAPER_VAE_MULTIPLE = 32  # Wan2.2 VAE 16x x DiT patch 2 (docs/full_size.md)
ASPECTS = [(1, 1)] * 4 + [(4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16)]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=20000, help="synthetic samples at the paper's geometry")
    p.add_argument("--batches", type=int, default=16, help="tiny-model batches timed in each layout")
    p.add_argument("--repeats", type=int, default=3, help="paired steps per batch; the fastest of each counts")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


@dataclass
class Counts:
    real: int = 0  # tokens the samples hold
    padded: int = 0  # token slots the padded layout computes
    packed: int = 0
    images_padded: int = 0  # images the VAE encodes
    images_packed: int = 0
    batches: int = 0
    with_edit: int = 0


def synthetic_sample(rng: random.Random, policy: ResolutionPolicy, edit_fraction: float) -> tuple:
    """(VAE size, und tokens, gen slots, tokens per slot) of one drawn sample."""
    aw, ah = rng.choice(ASPECTS)
    short = rng.uniform(384, 2048)
    native = (round(short * aw / min(aw, ah)), round(short * ah / min(aw, ah)))
    size, words = policy.vae_size(native), rng.randint(8, 80)
    per_slot = (size[0] // PAPER_VAE_MULTIPLE) * (size[1] // PAPER_VAE_MULTIPLE)
    if rng.random() >= edit_fraction:
        return size, words + 1, 1, per_slot
    vit = policy.vit_size(native)
    vit_tokens = (vit[0] // policy.cfg.vit_multiple) * (vit[1] // policy.cfg.vit_multiple) + 2
    return size, words + 1 + vit_tokens, 2, per_slot


def count_batch(counts: Counts, batch: list[Pending]) -> None:
    """A batch as each layout computes it: packed, real tokens only; padded, one padded batch per
    VAE size (a mixed row's sizes cannot share a padded tensor)."""
    for size in {p.sample[3] for p in batch}:
        group = [p for p in batch if p.sample[3] == size]
        und, slots, per_slot = [p.sample[0] for p in group], [p.sample[1] for p in group], group[0].sample[2]
        n, most = len(group), max(slots)
        counts.padded += n * max(und) + n * most * per_slot
        counts.images_padded += n * most
    und, slots = sum(p.sample[0] for p in batch), sum(p.sample[1] * p.sample[2] for p in batch)
    counts.real += und + slots
    counts.packed += und + slots
    counts.images_packed += sum(p.sample[1] for p in batch)
    counts.batches += 1
    counts.with_edit += max(p.sample[1] for p in batch) > 1


def paper_geometry(n_samples: int, mix_sizes: bool, seed: int = 0) -> Counts:
    """The paper recipe's bucketing of `n_samples` synthetic samples; `mix_sizes`: packed rows of
    every size (data.packing.layout packed), else one VAE size per batch."""
    data = load_recipe(PAPER).config.data
    policy = ResolutionPolicy(data.resolution, PAPER_VAE_MULTIPLE)
    edit_fraction = data.task_weights["edit"] / sum(data.task_weights.values())
    bucketer = Bucketer(data.batch_size, data.packing.token_budget, data.packing.max_tokens, mix_sizes)
    rng, counts = random.Random(seed), Counts()
    for draw in range(n_samples):
        size, und, slots, per_slot = synthetic_sample(rng, policy, edit_fraction)
        full = bucketer.add(size, Pending(draw, und + slots * per_slot, (und, slots, per_slot, size)))
        if full:
            count_batch(counts, full)
        oldest = bucketer.oldest()
        if oldest is not None and draw - oldest.draw >= data.packing.max_wait:
            count_batch(counts, bucketer.pop_oldest())
    return counts


def tiny_batches(n: int, root: Path) -> list:
    """n + 1 batches (one to warm up) of the tiny recipe's mixture pipeline."""
    recipe = load_recipe(TINY).config
    model = build_model(recipe)
    data = replace(recipe.data, num_samples=max(400, 20 * n))
    dm = MixtureDataModule(data, model.und.processor, root, vae_multiple=model.gen.vae_multiple)
    dm.prepare_data()
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    return [next(loader) for _ in range(n + 1)]


def step(module: LightBagelModule, optimizer, batch, index: int) -> float:
    start = time.perf_counter()
    loss, _ = module.flow_matching_loss(batch, sample_seeds(0, index, 0, len(batch)))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return time.perf_counter() - start


def tiny_timing(n: int, repeats: int) -> tuple[list[float], list[float], int, int]:
    with tempfile.TemporaryDirectory() as root:
        batches = tiny_batches(n, Path(root))
    recipe = load_recipe(TINY).config
    modules, optimizers = {}, {}
    for layout in ("padded", "packed"):
        cfg = replace(recipe, data=replace(recipe.data, packing=replace(recipe.data.packing, layout=layout)))
        modules[layout] = LightBagelModule(cfg).train()
        params = [p for p in modules[layout].parameters() if p.requires_grad]
        optimizers[layout] = torch.optim.AdamW(params, lr=1e-4)
        step(modules[layout], optimizers[layout], batches[0], 0)  # warm-up
    times = {"padded": [], "packed": []}
    for i, batch in enumerate(batches[1:], start=1):
        runs = {"padded": [], "packed": []}
        for r in range(repeats):  # the fastest of a few paired steps: other load on the machine only adds
            for layout in (("padded", "packed") if (i + r) % 2 else ("packed", "padded")):
                runs[layout].append(step(modules[layout], optimizers[layout], batch, i))
        for layout, measured in runs.items():
            times[layout].append(min(measured))
    gen = modules["packed"].model.gen
    per_slot = gen.tokens_per_slot(*(side // gen.vae.spatial_factor for side in batches[0].target.shape[-2:]))
    real = sum(int(b.und.attention_mask.sum()) + per_slot * (len(b) + int(b.has_source.sum())) for b in batches[1:])
    slots = sum(b.und.attention_mask.numel() + per_slot * len(b) * (1 + int(b.has_source.any())) for b in batches[1:])
    return times["padded"], times["packed"], real, slots


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    budget = load_recipe(PAPER).config.data.packing.token_budget
    for mix, c in ((False, paper_geometry(args.samples, False)), (True, paper_geometry(args.samples, True))):
        rows = "packed rows of every VAE size" if mix else "one VAE size per batch"
        print(f"(a) paper geometry, {rows}: {args.samples} samples in {c.batches} batches ({c.with_edit} with an "
              f"edit), mean {c.real / c.batches:.0f} real tokens per batch (budget {budget}):")
        print(f"    real-token fraction of computed token slots: padded {c.real / c.padded:.1%}, "
              f"packed {c.real / c.packed:.1%}; padded computes {c.padded / c.packed:.2f}x the packed tokens")
        print(f"    packed rows fill {c.real / c.batches / budget:.1%} of the token budget on average")
        print(f"    VAE encodes: padded {c.images_padded} images, packed {c.images_packed} "
              f"({c.images_padded / c.images_packed:.2f}x)")
    padded, packed, real, slots = tiny_timing(args.batches, args.repeats)
    ratios = [a / b for a, b in zip(padded, packed)]
    print(f"(b) tiny model, {args.batches} mixture batches x {args.repeats} paired steps, "
          f"{torch.get_num_threads()} thread(s), interleaved; "
          f"padded computes {slots / real:.2f}x the real tokens (before condition dropout):")
    per_token = {name: 1e6 * sum(times) / real for name, times in (("padded", padded), ("packed", packed))}
    print(f"    time per real token: padded {per_token['padded']:.1f} us, packed {per_token['packed']:.1f} us; "
          f"packed is {sum(padded) / sum(packed):.2f}x faster (per-batch ratios: median "
          f"{statistics.median(ratios):.2f}, min {min(ratios):.2f}, max {max(ratios):.2f})")


if __name__ == "__main__":
    main()
