"""Stops a run whose loss stays non-finite: the module skips each such step and counts it."""

from __future__ import annotations

import lightning as L

from lightbagel.training.checkpointing import AtomicCheckpoint


class NonFiniteLossError(RuntimeError):
    """Raised after `max_in_row` non-finite losses in a row (a checkpoint was saved first)."""


class NonFiniteGuard(L.Callback):
    def __init__(self, checkpoint: AtomicCheckpoint, max_in_row: int):
        if max_in_row < 1:
            raise ValueError(f"trainer.max_nonfinite_steps must be >= 1, got {max_in_row}")
        self.checkpoint, self.max_in_row = checkpoint, max_in_row

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # The streak is agreed by every rank (module.py all-reduces), so all of them stop here.
        if pl_module.nonfinite_streak < self.max_in_row:
            return
        path = self.checkpoint.save(trainer)
        raise NonFiniteLossError(
            f"loss was NaN/inf for {pl_module.nonfinite_streak} steps in a row (at step {trainer.global_step}, "
            f"{pl_module.nonfinite_total} in all); saved {path}; lower optim.lr or check the data, then resume"
        )
