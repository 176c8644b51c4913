"""A tiny deterministic training run for the multi-process tests (run directly or with torchrun).

Batch k is a fixed function of k (rank r takes its slice of the global batch), randomness is
keyed per sample (training/randomness.py): any world size and any resume replays the same run.
Writes `losses.json` (rank-averaged loss per step) and `weights.safetensors` (full trained
weights) into --out on rank 0; with --report also `initial.safetensors` (trainable weights once
set up for training) and `precision.json` (precision_probe.py).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from loaders import FastForward, ResumableLoader  # noqa: E402  (this script's folder)
from precision_probe import PrecisionProbe, full_trainable  # noqa: E402  (this script's folder)
from safetensors.torch import save_file  # noqa: E402

from lightbagel.data.collate import Collator  # noqa: E402
from lightbagel.precision import precision_of  # noqa: E402
from lightbagel.recipe import load_recipe  # noqa: E402
from lightbagel.shapes.heldout import validation_samples  # noqa: E402
from lightbagel.training.checkpointing import AtomicCheckpoint  # noqa: E402
from lightbagel.training.module import LightBagelModule  # noqa: E402
from lightbagel.training.randomness import sample_seeds  # noqa: E402
from lightbagel.training.strategy import make_strategy  # noqa: E402

TINY = Path(__file__).resolve().parents[2] / "recipes" / "tiny.yaml"


class FixedBatches:
    def __init__(self, collator: Collator, global_batch: int, rank: int, world: int):
        self.collator, self.global_batch, self.rank, self.local = collator, global_batch, rank, global_batch // world

    def __iter__(self):
        for k in itertools.count():
            samples = validation_samples(self.global_batch, 32, seed=1000 + k)
            yield self.collator(samples[self.rank * self.local:(self.rank + 1) * self.local])


class UnevenBatches:
    """Rank r takes `per_rank[r]` = (samples, image size) every step: ranks hold different token counts."""

    def __init__(self, collator: Collator, per_rank: list[tuple[int, int]], rank: int):
        self.collator, (self.n, self.size), self.rank = collator, per_rank[rank], rank

    def __iter__(self):
        for k in itertools.count():
            yield self.collator(uneven_samples(k, self.rank, self.n, self.size))


def uneven_samples(step: int, rank: int, n: int, size: int) -> list[dict]:
    return validation_samples(n, size, seed=2000 + 10 * step + rank)


def parse_uneven(text: str) -> list[tuple[int, int]]:
    """"3x32,1x64": rank 0 takes 3 samples of 32 px, rank 1 one of 64 px."""
    return [tuple(int(v) for v in part.split("x")) for part in text.split(",")]


class SaveGradients(L.Callback):
    """The full gradients of the first optimizer step (gathered under FSDP2), for grads.safetensors."""

    def __init__(self):
        self.grads = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.grads is not None:
            return
        self.grads = {}
        for name, p in pl_module.model.named_parameters():
            if p.grad is not None:
                grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
                self.grads[name] = grad.detach().clone().contiguous()


class Record(L.Callback):
    def __init__(self, kill_at: int):
        self.losses, self.kill_at = [], kill_at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"].detach().clone()
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(loss, op=torch.distributed.ReduceOp.AVG)
        self.losses.append(float(loss))
        if trainer.global_step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, as a preempted node


def union_gradients(cfg, per_rank: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """One process over the union of every rank's `--uneven` samples, each token weighed the same: the
    squared errors summed over all target tokens over their number, each sample keyed by its global
    index (rank 0's first, then rank 1's)."""
    module = LightBagelModule(cfg)
    module.configure_model()
    collator, first, total, sums = Collator(module.model.und.processor, 32), 0, 0, []
    for rank, (n, size) in enumerate(per_rank):
        mean, tokens = module.flow_matching_loss(collator(uneven_samples(0, rank, n, size)),
                                                 sample_seeds(cfg.seed, 0, first, n))
        sums.append(mean * tokens)
        first, total = first + n, total + tokens
    (sum(sums) / total).backward()
    return {n: p.grad.contiguous() for n, p in module.model.named_parameters() if p.grad is not None}


def kill_during_save(step: int) -> None:
    """SIGKILL after the model/optimizer shards of `step` are written, before meta.pt and the rename."""
    import lightning.pytorch.strategies.model_parallel as mp

    original = mp._distributed_checkpoint_save

    def save(state, path):
        original(state, path)
        if Path(path).name.endswith(f"step-{step:08d}.ckpt"):
            os.kill(os.getpid(), signal.SIGKILL)

    mp._distributed_checkpoint_save = save


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--global-batch", type=int, default=4)
    p.add_argument("--every", type=int, default=2)
    p.add_argument("--strategy", default="fsdp2")
    p.add_argument("--resume", default=None, help="checkpoint to resume from")
    p.add_argument("--kill-at", type=int, default=-1)
    p.add_argument("--kill-in-save", type=int, default=-1)
    p.add_argument("--report", action="store_true", help="write initial.safetensors and precision.json")
    p.add_argument("--uneven", default=None, help="per-rank 'NxSIZE,...' batches instead of slices of one")
    p.add_argument("--grads", action="store_true", help="write grads.safetensors (first optimizer step)")
    p.add_argument("--union", default=None, help="'NxSIZE,...': grads.safetensors of one process over them all")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    out = Path(args.out)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    overrides = [f"output_dir={out}", f"trainer.strategy={args.strategy}", f"trainer.max_steps={args.steps}",
                 "optim.warmup_steps=2", "trainer.gradient_clip_val=0.5", *args.overrides]
    cfg = load_recipe(TINY, overrides).config
    if args.kill_in_save >= 0:
        kill_during_save(args.kill_in_save)
    L.seed_everything(cfg.seed, verbose=False)
    if args.union:
        out.mkdir(parents=True, exist_ok=True)
        return save_file(union_gradients(cfg, parse_uneven(args.union)), out / "grads.safetensors")
    module = LightBagelModule(cfg)
    collator = Collator(module.model.und.processor, 32)
    batches = UnevenBatches(collator, parse_uneven(args.uneven), rank) if args.uneven else \
        FixedBatches(collator, args.global_batch, rank, world)
    loader = ResumableLoader(batches)
    record, grads = Record(args.kill_at), SaveGradients()
    checkpoint = AtomicCheckpoint(out / "checkpoints", args.every, keep=10)
    probe = PrecisionProbe()
    callbacks = [record, checkpoint, FastForward(loader)] + ([probe] if args.report else []) + \
        ([grads] if args.grads else [])
    trainer = L.Trainer(accelerator="cpu", devices=world, strategy=make_strategy(cfg.trainer),
                        precision=precision_of(cfg.trainer).lightning, max_steps=args.steps,
                        gradient_clip_val=cfg.trainer.gradient_clip_val, callbacks=callbacks, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=out)
    trainer.fit(module, train_dataloaders=loader, ckpt_path=args.resume, weights_only=True)
    state = full_trainable(module)
    if trainer.is_global_zero:
        save_file(state, out / "weights.safetensors")
        (out / "losses.json").write_text(json.dumps(record.losses))
        if args.grads:
            save_file(grads.grads, out / "grads.safetensors")
        if args.report:
            save_file(probe.initial, out / "initial.safetensors")
            (out / "precision.json").write_text(json.dumps(probe.report()))


if __name__ == "__main__":
    main()
