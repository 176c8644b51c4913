"""A callback that reports the data stream to the loggers (MLflow): skip counts per source and
reason, summed over workers and ranks, the mixture stage and the samples per batch."""

from __future__ import annotations

import lightning as L
import torch

from lightbagel.data.pipeline import REASONS


class DataMonitor(L.Callback):
    def __init__(self, datamodule, every_n_steps: int):
        self.data, self.every = datamodule, max(1, every_n_steps)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        state = getattr(batch, "data_state", None)
        if state is None or trainer.global_step % self.every:
            return
        names = [s.name for s in self.data.sources]
        counts = torch.zeros(len(names), len(REASONS), dtype=torch.float64)
        for key, n in self.data.skipped.counts.items():
            source, _, reason = key.rpartition("/")
            if source in names and reason in REASONS:
                counts[names.index(source), REASONS.index(reason)] = n
        # Same shape on every rank, so the sum is one collective that cannot mismatch.
        counts = trainer.strategy.reduce(counts.to(pl_module.device), reduce_op="sum").cpu()
        metrics = {f"mixture/skipped/{n}/{r}": float(counts[i, j])
                   for i, n in enumerate(names) for j, r in enumerate(REASONS) if counts[i, j] > 0}
        metrics["mixture/skipped_total"] = float(counts.sum())
        metrics["mixture/stage"] = float(state["stage"])
        metrics["mixture/batch_size"] = float(len(batch))
        for name in names:
            metrics[f"mixture/share/{name}"] = state["sources"].count(name) / len(batch)
        if trainer.logger is not None and trainer.is_global_zero:
            trainer.logger.log_metrics(metrics, step=trainer.global_step)
