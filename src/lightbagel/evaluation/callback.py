"""A Lightning callback that runs the synthetic eval during training and logs the table."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import lightning as L

from lightbagel.evaluation.synthetic import evaluate_synthetic

log = logging.getLogger(__name__)


class SyntheticEval(L.Callback):
    """Every N steps (and at the end): exact GenEval-style scores of the model being trained."""

    def __init__(self, every_n_steps: int, per_category: int = 4, steps: int = 20,
                 out_dir: Optional[Path] = None):
        self.every, self.per_category, self.steps, self.out_dir = every_n_steps, per_category, steps, out_dir
        self.history: list[tuple[int, dict[str, float]]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every > 0 and trainer.global_step % self.every == 0:
            self.run(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.every > 0:
            self.run(trainer, pl_module)

    def run(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or any(step == trainer.global_step for step, _ in self.history):
            return
        from lightbagel.inference.pipeline import LightBagelPipeline

        was_training = pl_module.training
        pipe = LightBagelPipeline(pl_module.model, pl_module.recipe, device=pl_module.device)
        report = evaluate_synthetic(pipe, self.per_category, config={"steps": self.steps},
                                    progress=False)
        pl_module.train(was_training)
        metrics = report.metrics("val/")
        self.history.append((trainer.global_step, metrics))
        log.info("step %d synthetic eval:\n%s", trainer.global_step, report.to_markdown())
        if trainer.logger is not None:
            trainer.logger.log_metrics(metrics, step=trainer.global_step)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / f"step_{trainer.global_step:06d}.md").write_text(report.to_markdown() + "\n")
