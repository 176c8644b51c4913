"""How long the training thread waits for each batch of the tiny recipe's pipeline, and how long a
fixed stand-in step takes beside it: made in place, received from one worker, or taken from the
prefetch thread (data/prefetch.py) over either.

    .venv/bin/python benchmarks/prefetch_wait.py [--batches 40] [--rounds 2] [--work 60]

The stand-in step is a fixed amount of single-threaded matmul work (`--work` 256 x 256 products), so
a loader that steals CPU or the GIL from the training thread shows as a longer step, not only as a
shorter wait. Loaders run one after another, alternating their order each round.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lightbagel.data.datamodule import MixtureDataModule
from lightbagel.recipe import load_recipe
from lightbagel.training.module import LightBagelModule

REPO = Path(__file__).resolve().parents[1]
WARMUP = 3
MODES = {  # name: (data.num_workers, through the prefetch thread)
    "in place": (0, False), "1 worker": (1, False), "prefetch thread": (0, True), "1 worker + thread": (1, True)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--work", type=int, default=60, help="256 x 256 matmuls per stand-in step")
    return p.parse_args()


def loader(root: Path, workers: int, prefetch: bool):
    cfg = load_recipe(REPO / "recipes" / "tiny.yaml", [f"data.num_workers={workers}"]).config
    model = LightBagelModule(cfg).model
    dm = MixtureDataModule(cfg.data, model.und.processor, root, vae_multiple=model.gen.vae_multiple)
    dm.prepare_data()
    dm.setup("fit")
    prefetcher = dm.train_dataloader()
    return prefetcher if prefetch else prefetcher.loader


def stand_in_step(x: torch.Tensor, work: int) -> torch.Tensor:
    for _ in range(work):
        x = (x @ x).tanh()
    return x


def run(batches, n: int, work: int) -> tuple[list[float], list[float]]:
    waits, steps, x = [], [], torch.randn(256, 256)
    it = iter(batches)
    for _ in range(n):
        start = time.perf_counter()
        next(it)
        fetched = time.perf_counter()
        x = stand_in_step(x, work)
        waits.append(fetched - start)
        steps.append(time.perf_counter() - fetched)
    return waits[WARMUP:], steps[WARMUP:]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="prefetch-wait-")) / "data"
    results = {name: ([], []) for name in MODES}
    for r in range(args.rounds):
        for name in list(MODES)[:: 1 if r % 2 == 0 else -1]:
            waits, steps = run(loader(root, *MODES[name]), args.batches, args.work)
            results[name][0].extend(waits)
            results[name][1].extend(steps)
    print(f"{'loader':20s} {'median wait ms':>15s} {'mean wait':>10s} {'median step ms':>15s} {'wait + step':>12s}")
    for name, (waits, steps) in results.items():
        total = [a + b for a, b in zip(waits, steps)]
        print(f"{name:20s} {statistics.median(waits) * 1e3:15.2f} {statistics.mean(waits) * 1e3:10.2f} "
              f"{statistics.median(steps) * 1e3:15.1f} {statistics.median(total) * 1e3:12.1f}")


if __name__ == "__main__":
    main()
