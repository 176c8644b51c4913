"""What a training run prints: a start-up banner, and in a log file (nohup, SLURM, CI: stdout is
not a terminal) a plain progress line every N steps in place of the redrawn progress bar."""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from typing import Optional, TextIO

import lightning as L

# Log records dropped where they are emitted: advice to install another product.
_DROPPED = {"lightning.pytorch.utilities.rank_zero": "litlogger", "lightning.fabric.utilities.rank_zero": "litlogger"}
_QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic.runtime.migration")


def interactive(stream: Optional[TextIO] = None) -> bool:
    """Whether `stream` (stdout) is a terminal that can redraw a progress bar."""
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


class _Drop(logging.Filter):
    def __init__(self, needle: str):
        super().__init__()
        self.needle = needle

    def filter(self, record: logging.LogRecord) -> bool:
        return self.needle not in record.getMessage()


def silence_noise() -> None:
    """Silences known noise at its source: Lightning's litlogger advert, MLflow's table creation,
    and a deprecation Lightning's own pytree helper triggers inside torch (nothing a user can fix)."""
    for name, needle in _DROPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(needle))
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class PlainProgress(L.Callback):
    """`step S/MAX  loss L  R samples/s  ETA T` every `every_n_steps` optimizer steps and at the end."""

    def __init__(self, every_n_steps: int, stream: Optional[TextIO] = None):
        self.every, self.stream = max(1, every_n_steps), stream
        self._start, self._first_step, self._samples, self._printed = 0.0, 0, 0, -1

    def on_train_start(self, trainer, pl_module) -> None:
        self._start, self._first_step, self._samples = time.perf_counter(), trainer.global_step, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._samples += len(batch) * trainer.world_size
        step = trainer.global_step
        if step == self._printed or (step % self.every and step != trainer.max_steps):
            return
        self._printed = step
        if trainer.is_global_zero:
            loss = float(outputs["loss"]) if outputs is not None else float("nan")
            print(self.line(step, trainer.max_steps, loss), file=self.stream or sys.stdout, flush=True)

    def line(self, step: int, max_steps: int, loss: float) -> str:
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        done = step - self._first_step
        eta = (max_steps - step) * elapsed / done if done > 0 else float("inf")
        return (f"step {step}/{max_steps}  loss {loss:.4f}  {self._samples / elapsed:.1f} samples/s  "
                f"ETA {duration(eta)}")


def banner(recipe, out, resume_from, model, run_id: Optional[str], tracking_uri: Optional[str]) -> str:
    """What this run is: recipe, output folder, device, steps, model size, MLflow run."""
    cfg, tr = recipe.config, recipe.config.trainer
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    start = f"resuming from {resume_from.name}" if resume_from is not None else "starting at step 0"
    lines = [
        f"recipe   {recipe.path} (name {cfg.name})",
        f"output   {out}",
        f"device   {tr.accelerator} x {tr.devices} on {tr.num_nodes} node(s), precision {tr.precision}",
        f"steps    {tr.max_steps}, {start}",
        f"model    {total:,} parameters, {trainable:,} trainable",
    ]
    if run_id:
        lines.append(f"mlflow   run {run_id}: mlflow ui --backend-store-uri {tracking_uri}")
    return "\n".join(f"lightbagel-fit  {line}" for line in lines)
