"""Training steps per second of recipes/tiny.yaml: this checkout against another commit's, side by side.

    git worktree add /tmp/old ef1079d
    .venv/bin/python benchmarks/step_speed.py --old /tmp/old [--rounds 8] [--steps 10] [--threads 1]

Two worker processes, one per checkout (its `src` first on the path), build the tiny recipe's
module (`configure_model`, `configure_optimizers`: that commit's AdamW) and draw the same batches
from one shapes-world data root. The parent then asks them in turn, the order alternating each
round, for `--steps` steps each (per-sample seeds, forward, backward, optimizer step, zero grad, on
the same batches): the rounds are paired, so load on a shared machine moves both alike. It prints
each round's ratio and their median and best.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WORKER = r"""
import sys, time, torch
from dataclasses import replace
torch.set_num_threads(int(sys.argv[3]))
from lightbagel.data.datamodule import MixtureDataModule
try:  # older commits: a function beside the bucketer
    from lightbagel.data.buckets import vae_multiple_of
except ImportError:
    vae_multiple_of = lambda gen: gen.vae_multiple  # noqa: E731
from lightbagel.recipe import load_recipe
from lightbagel.training.module import LightBagelModule
recipe = load_recipe(sys.argv[1], [f"data.root={sys.argv[2]}", "data.num_samples=400"]).config
module = LightBagelModule(recipe)
module.configure_model()
optimizer = module.configure_optimizers()["optimizer"]
dm = MixtureDataModule(recipe.data, module.model.und.processor, vae_multiple=vae_multiple_of(module.model.gen))
dm.prepare_data()
dm.setup("fit")
loader = iter(dm.train_dataloader())
batches = [next(loader) for _ in range(16)]
dm.close_loaders()
done = 0
def step():
    global done
    loss, _ = module.weighted_loss(batches[done % len(batches)], done)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    done += 1
for _ in range(3):  # warm-up
    step()
print("ready", flush=True)
for line in sys.stdin:
    start = time.perf_counter()
    for _ in range(int(line)):
        step()
    print(time.perf_counter() - start, flush=True)
"""


def start(checkout: Path, data: Path, threads: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(checkout / "src"), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(checkout / "recipes" / "tiny.yaml"), str(data),
                             str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                            cwd=tempfile.gettempdir())
    assert proc.stdout.readline().strip() == "ready", f"{checkout}: the worker did not start"
    return proc


def timed(proc: subprocess.Popen, steps: int) -> float:
    proc.stdin.write(f"{steps}\n")
    proc.stdin.flush()
    return float(proc.stdout.readline())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--old", type=Path, required=True, help="the other checkout (e.g. a git worktree)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="steps per worker per round")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as data:
        old = start(args.old.resolve(), Path(data), args.threads)  # writes the shards; the new one reads them
        new = start(REPO, Path(data), args.threads)
        ratios = []
        for r in range(args.rounds):
            order = (old, new) if r % 2 else (new, old)
            times = {id(proc): timed(proc, args.steps) for proc in order}
            ratio = times[id(old)] / times[id(new)]
            ratios.append(ratio)
            print(f"round {r}: old {args.steps / times[id(old)]:.2f} steps/s, new {args.steps / times[id(new)]:.2f} "
                  f"steps/s, new/old {ratio:.2f}x", flush=True)
        for proc in (old, new):
            proc.stdin.close()
            proc.wait()
    print(f"steps/s of {args.old} -> this checkout, {args.threads} thread(s) each, {args.rounds} paired rounds of "
          f"{args.steps} steps: median {statistics.median(ratios):.2f}x, best {max(ratios):.2f}x, "
          f"worst {min(ratios):.2f}x; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
