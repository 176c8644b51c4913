"""What a training run prints: a start-up banner, then a redrawn `step 97/120` bar in a terminal
or, in a log file (nohup, SLURM, CI: stdout is not a terminal), a plain progress line every N steps."""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from typing import Optional, TextIO

import lightning as L
from lightning.pytorch.callbacks import ProgressBar

from lightbagel.progress import step_bar

# Log records dropped where they are emitted: advice to install another product, which
# accelerators exist (the banner says which one is used), the loop's own "stopped" line (the CLI
# says how the run ended) and its restore lines (the banner says which checkpoint it resumes).
_NOISE = ("litlogger", "GPU available:", "TPU available:", "HPU available:", "`Trainer.fit` stopped:",
          "Restoring states from the checkpoint", "Restored all states from the checkpoint")
_DROPPED = {"lightning.pytorch.utilities.rank_zero": _NOISE, "lightning.fabric.utilities.rank_zero": _NOISE}
_QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic.runtime.migration")


def interactive(stream: Optional[TextIO] = None) -> bool:
    """Whether `stream` (stdout) is a terminal that can redraw a progress bar."""
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


class _Drop(logging.Filter):
    def __init__(self, needles: tuple[str, ...]):
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(needle in message for needle in self.needles)


def silence_noise() -> None:
    """Silences known noise at its source: Lightning's litlogger advert and accelerator lines, MLflow's table creation,
    a deprecation Lightning's own pytree helper triggers inside torch (nothing a user can fix), and
    Lightning's note on modules in eval mode (the frozen towers, by design)."""
    for name, needles in _DROPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(needles))
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    # Frozen towers stay in eval mode on purpose (no dropout in a tower that does not learn).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


def checkpoint_every(tr) -> int:
    """The checkpoint cadence in steps: `trainer.checkpoint_every_n_steps`, 0 meaning max_steps // 4."""
    return tr.checkpoint_every_n_steps or max(1, tr.max_steps // 4)


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


class StepBar(ProgressBar):
    """The terminal's bar: `step 97/120 |####  | 00:12<00:03, loss 0.2600`. Lightning's own counts
    epochs and batches (`Epoch 0/-2`), which a max_steps run has no use for."""

    def __init__(self, stream: Optional[TextIO] = None):
        super().__init__()
        self.stream, self._bar, self._enabled = stream, None, True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        if self._enabled and trainer.is_global_zero:
            self._bar = step_bar(trainer.max_steps, initial=trainer.global_step, stream=self.stream or sys.stdout)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._bar is None or trainer.global_step == self._bar.n:
            return
        self._bar.n = trainer.global_step
        if outputs is not None:
            self._bar.set_postfix_str(f"loss {float(outputs['loss']):.4f}", refresh=False)
        self._bar.refresh()

    def on_train_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def banner(recipe, out, resume_from, model, run_id: Optional[str], tracking_uri: Optional[str]) -> str:
    """What this run is: recipe, output folder, device, steps, model size, MLflow run."""
    cfg, tr = recipe.config, recipe.config.trainer
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    start = f"resuming from {resume_from.name}" if resume_from is not None else "starting at step 0"
    every = checkpoint_every(tr)
    lines = [
        f"recipe   {recipe.path} (name {cfg.name})",
        f"output   {out}",
        f"device   {tr.accelerator} x {tr.devices} on {tr.num_nodes} node(s), precision {tr.precision}",
        f"steps    {tr.max_steps}, {start}",
        f"model    {total:,} parameters, {trainable:,} trainable",
        f"keeps    a checkpoint every {every} steps, at the end and on SIGTERM (newest {tr.keep_checkpoints} kept); "
        f"every export (exports/step-N, `export` is the newest)",
    ]
    if run_id:
        lines.append(f"mlflow   run {run_id}: mlflow ui --backend-store-uri {tracking_uri}")
    return "\n".join(f"lightbagel-fit  {line}" for line in lines)
