"""`lightbagel-fit` against a bare PyTorch loop on the same model and the same batches, paired per step.

    .venv/bin/python benchmarks/fit_overhead.py [--steps 100] [--terminal] [KEY=VALUE overrides of recipes/tiny.yaml]

One process runs `training.fit.fit` on the tiny recipe as `lightbagel-fit` does (its LightningModule,
DataModule, callbacks, MLflow logger writing to a temporary store, the Trainer it builds; its output
as into a log file, or with `--terminal` as into a terminal: the progress bar redrawn every step).
A callback, first in the list, interleaves per step:
- bare, pre-collated: the same module init, per-sample seeds, AdamW, warmup schedule, zero gradients
  for unreached weights and gradient clipping, no Lightning, on the batch fit just drew;
- bare, own loader: the same loop drawing from its own copy of the recipe's data pipeline (the same
  `data.num_workers`), so data loading counts on both sides;
then fit's step k runs. Fit's step time is from the end of those bare steps to the next step's start
(or the end of training): the time a user waits, data loading, logging and checkpoints included.
All three train on the same batch at step k (the losses are compared step by step) at the same
moment, so on a shared CPU the ratio holds while absolute times drift.

Exclusive time per part of each loop (data wait, forward, backward, optimizer, zero-fill and
clipping, callbacks, `self.log`, logger writes, checkpoints; the Lightning loop is the rest) comes
from wrapping those calls (~1 us each) and says where fit's extra time goes.
"""

from __future__ import annotations

import argparse
import functools
import io
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.core.module import LightningModule
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.trainer import call
from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import _LoggerConnector
from torch.utils.data.dataloader import _BaseDataLoaderIter

from lightbagel.data.datamodule import MixtureDataModule
from lightbagel.recipe import load_recipe
from lightbagel.runs.mlflow_logger import BackgroundMLFlowLogger
from lightbagel.training import fit as fit_module
from lightbagel.training.checkpointing import AtomicCheckpoint
from lightbagel.training.module import LightBagelModule, objective_tasks
from lightbagel.training.randomness import sample_seeds

REPO = Path(__file__).resolve().parents[1]
WARMUP = 3  # first steps: allocator and worker start-up, not steady state
RUNS = ("bare, pre-collated", "bare, own loader", "lightbagel-fit")
BARE = "(interleaved bare steps)"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--terminal", action="store_true", help="run fit as in a terminal: progress bar, not lines")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE overrides of recipes/tiny.yaml")
    return p.parse_args()


class Parts:
    """Exclusive time per named part while `active`: a wrapped call's time minus that of wrapped
    calls inside it. Calls from other threads (the MLflow writer) are not the training thread's."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.active = False
        self._inner: list[float] = []
        self._thread = threading.get_ident()

    def wrap(self, fn, name: str):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if not self.active or threading.get_ident() != self._thread:
                return fn(*args, **kwargs)
            self._inner.append(0.0)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                inner = self._inner.pop()
                if self.active:  # not when the timed span closed inside (fit's last step ends in on_train_end)
                    self.seconds[name] += spent - inner
                if self._inner:
                    self._inner[-1] += spent

        return timed


FIT_PARTS = [  # (owner, attribute, part) timed inside fit
    (_BaseDataLoaderIter, "__next__", "data wait"),
    (LightBagelModule, "weighted_loss", "forward"),
    (torch.Tensor, "backward", "backward"),
    (torch.optim.Adam, "step", "optimizer"),  # AdamW inherits it
    (LightBagelModule, "on_before_optimizer_step", "zero-fill + clip"),
    (Precision, "clip_gradients", "zero-fill + clip"),
    (call, "_call_callback_hooks", "callbacks"),
    (LightningModule, "log", "self.log"),
    (_LoggerConnector, "log_metrics", "logger writes"),
    (BackgroundMLFlowLogger, "log_metrics", "logger writes"),
    (BackgroundMLFlowLogger, "save", "logger writes"),
    (AtomicCheckpoint, "save", "checkpoints"),
]
try:  # batches taken from the prefetch thread (data/prefetch.py); absent before it existed
    from lightbagel.data.prefetch import PrefetchIterator

    FIT_PARTS.append((PrefetchIterator, "__next__", "data wait"))
except ImportError:
    pass


@contextmanager
def instrumented(parts: Parts, targets):
    saved = [(owner, attr, owner.__dict__.get(attr)) for owner, attr, _ in targets]
    try:
        for owner, attr, name in targets:
            setattr(owner, attr, parts.wrap(getattr(owner, attr), name))  # an inherited one shadowed here
        yield parts
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original) if original is not None else delattr(owner, attr)


class BareLoop:
    """The module, optimizer and schedule `fit` builds, from the same seed, stepped by hand."""

    def __init__(self, cfg, batches=None):
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        self.module = LightBagelModule(cfg)
        self.module.configure_model()
        self.module.train()
        configured = self.module.configure_optimizers()
        self.optimizer, self.schedule = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.clip, self.weight, self.seed = cfg.trainer.gradient_clip_val, cfg.objective.flow_weight, cfg.seed
        self.batches, self.parts = batches, Parts()
        self.times, self.losses, self.keys = [], [], []
        stamp = self.parts.wrap
        self.fetch, self.forward = stamp(next, "data wait"), stamp(self.module.flow_matching_loss, "forward")
        self.backward = stamp(torch.Tensor.backward, "backward")
        self.zero_fill_and_clip, self.step = stamp(self._zero_fill_and_clip, "zero-fill + clip"), stamp(
            self.optimizer.step, "optimizer")

    def train_step(self, k: int, batch=None) -> None:
        start = time.perf_counter()
        self.parts.active = k >= WARMUP
        batch = batch if self.batches is None else self.fetch(self.batches)
        loss, _ = self.forward(batch, sample_seeds(self.seed, k, 0, len(batch)))
        self.backward(self.weight * loss)
        self.zero_fill_and_clip()
        self.step()
        self.optimizer.zero_grad()
        self.schedule.step()
        self.parts.active = False
        self.times.append(time.perf_counter() - start)
        self.losses.append(self.weight * float(loss.detach()))
        self.keys.append(batch.data_state["keys"])

    def _zero_fill_and_clip(self) -> None:
        for p in self.params:  # as LightBagelModule.on_before_optimizer_step: AdamW steps every weight
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)


def own_loader(cfg, root: Path):
    """The recipe's data pipeline, built as `fit` builds it (workers start here, before any timing),
    consumed as Lightning consumes it."""
    model = LightBagelModule(cfg).model
    data = MixtureDataModule(cfg.data, model.und.processor, root, vae_multiple=model.gen.vae_multiple,
                             batches_per_step=cfg.trainer.accumulate_grad_batches, tasks=objective_tasks(cfg))
    data.prepare_data()
    data.setup("fit")
    return map(functools.partial(data.on_before_batch_transfer, dataloader_idx=0), data.train_dataloader())


class Interleave(L.Callback):
    """First of fit's callbacks: at each step's start, times fit's previous step (from the end of
    the bare steps), then runs both bare loops on step k (alternating which goes first)."""

    def __init__(self, cfg, root: Path, parts: Parts):
        self.pre, self.own = BareLoop(cfg), BareLoop(cfg, own_loader(cfg, root))
        self.parts, self.times, self.losses, self.keys = parts, [], [], []
        self._mark = None
        # Its own time is no part of fit's: recorded apart, so no enclosing part counts it.
        self.on_train_batch_start = parts.wrap(self.on_train_batch_start, BARE)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._close()
        k = trainer.global_step
        for loop in (self.pre, self.own) if k % 2 == 0 else (self.own, self.pre):
            loop.train_step(k, batch)
        self.keys.append(batch.data_state["keys"])
        self.parts.active = k >= WARMUP
        self._mark = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer, pl_module) -> None:
        self._close()  # before the final sample grid and export: not part of a step

    def _close(self) -> None:
        if self._mark is not None:
            self.times.append(time.perf_counter() - self._mark)
        self.parts.active = False


@contextmanager
def interleaved_fit(interleave: Interleave, terminal: bool):
    """`fit` as `lightbagel-fit` runs it, with `interleave` first among its callbacks; its output
    kept, as from a log file (plain progress lines) or a terminal (the redrawn progress bar)."""
    build, is_terminal = fit_module._callbacks, fit_module.interactive
    fit_module._callbacks = lambda *args: [interleave, *build(*args)]
    fit_module.interactive = lambda stream=None: terminal
    try:
        with redirect_stdout(io.StringIO()):
            yield
    finally:
        fit_module._callbacks, fit_module.interactive = build, is_terminal


def report(runs: dict) -> None:
    times = {name: run.times[WARMUP:] for name, run in runs.items()}
    base = times[RUNS[0]]
    print(f"{'run':22s} {'median ms/step':>15s} {'mean':>8s} {'median paired ratio':>20s} {'ratio of medians':>17s} "
          f"{'of means':>9s}")
    for name in RUNS:
        paired = statistics.median(a / b for a, b in zip(times[name], base))
        median, mean = statistics.median(times[name]), statistics.mean(times[name])
        print(f"{name:22s} {median * 1e3:15.1f} {mean * 1e3:8.1f} {paired:20.3f} "
              f"{median / statistics.median(base):17.3f} {mean / statistics.mean(base):9.3f}")
    fit = runs[RUNS[2]]
    for name in RUNS[:2]:
        assert runs[name].keys == fit.keys, f"{name} trained on other samples than fit"
    diff = max(abs(a - b) for name in RUNS[:2] for a, b in zip(runs[name].losses, fit.losses))
    print(f"same samples at every step; max |loss - fit's loss| over every step of both bare loops: {diff:.2e}")


def breakdown(runs: dict) -> None:
    """Mean exclusive ms per step of each part, fit against each bare loop."""
    n = len(runs[RUNS[2]].times) - WARMUP
    table = {name: dict(run.parts.seconds) for name, run in runs.items()}
    table[RUNS[2]].pop(BARE, None)
    for name, run in runs.items():
        table[name]["loop (rest; Lightning's in fit)"] = sum(run.times[WARMUP:]) - sum(table[name].values())
    parts = list(dict.fromkeys(p for name in RUNS for p in table[name]))
    print(f"\nwhere the time goes: mean ms per step over {n} steps (exclusive time of each part)")
    print(f"{'part':24s} {'pre-collated':>13s} {'own loader':>11s} {'fit':>8s} {'fit - own':>10s}")
    for part in [*parts, "step"]:
        ms = [(sum(run.times[WARMUP:]) if part == "step" else table[name].get(part, 0.0)) / n * 1e3
              for name, run in runs.items()]
        print(f"{part:24s} {ms[0]:13.1f} {ms[1]:11.1f} {ms[2]:8.1f} {ms[2] - ms[1]:10.1f}")


def main() -> None:
    args = parse_args()
    root = Path(tempfile.mkdtemp(prefix="fit-overhead-"))
    recipe = load_recipe(REPO / "recipes" / "tiny.yaml", [
        f"output_dir={root / 'fit'}", f"data.root={root / 'data'}", f"trainer.max_steps={args.steps}", *args.overrides])
    cfg = recipe.config
    MixtureDataModule(cfg.data, None, root / "data").prepare_data()  # the shards, once, before any timing
    torch.set_num_threads(cfg.trainer.num_threads or torch.get_num_threads())
    parts = Parts()
    with instrumented(parts, FIT_PARTS):  # before any AdamW exists: torch wraps AdamW.step on the first
        interleave = Interleave(cfg, root / "data", parts)
        with interleaved_fit(interleave, args.terminal):
            fit_module.fit(recipe)
    print(f"tiny recipe, {args.steps} steps (first {WARMUP} dropped), data.num_workers={cfg.data.num_workers}, "
          f"trainer.num_threads={cfg.trainer.num_threads}, log every {cfg.trainer.log_every_n_steps} steps, "
          f"MLflow on (temporary store), output to a {'terminal' if args.terminal else 'log file'} "
          f"{' '.join(args.overrides)}")
    report({RUNS[0]: interleave.pre, RUNS[1]: interleave.own, RUNS[2]: interleave})
    breakdown({RUNS[0]: interleave.pre, RUNS[1]: interleave.own, RUNS[2]: interleave})


if __name__ == "__main__":
    main()
