"""`fit(recipe)`: the whole training job, from a validated recipe to an exported model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ThroughputMonitor
from lightning.pytorch.loggers import MLFlowLogger

from lightbagel.data.collate import Collator
from lightbagel.data.datamodule import MixtureDataModule
from lightbagel.data.monitor import DataMonitor
from lightbagel.recipe import Recipe
from lightbagel.training.callbacks import SampleGrid, SkippedDataLogger
from lightbagel.training.checkpoint_export import export_trained
from lightbagel.training.checkpointing import AtomicCheckpoint, latest_checkpoint
from lightbagel.training.module import LightBagelModule, objective_tasks
from lightbagel.training.nan_guard import NonFiniteGuard
from lightbagel.training.stages import load_parts, run_pretrain
from lightbagel.training.strategy import is_sharded, make_strategy

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    output_dir: Path
    export_path: Path
    run_id: Optional[str]
    tracking_uri: Optional[str]
    first_loss: Optional[float]
    last_loss: Optional[float]


class LossHistory(L.Callback):
    """Keeps the per-step loss so the CLI can report first and last."""

    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if outputs is not None:  # None: a non-finite step the module skipped
            self.losses.append(float(outputs["loss"]))


def token_counter(model):
    """Tokens a batch feeds the fused model: text + ViT tokens and every VAE image slot."""
    factor = model.gen.vae.spatial_factor

    def count(batch) -> int:
        if not hasattr(batch, "target"):  # an und batch: the VLM's tokens only
            return int(batch.und.attention_mask.sum())
        h, w = batch.target.shape[-2:]
        per_image = model.gen.tokens_per_slot(h // factor, w // factor)
        return int(batch.und.attention_mask.sum()) + per_image * (len(batch) + int(batch.has_source.sum()))

    return count


def make_logger(recipe: Recipe, out: Path) -> Optional[MLFlowLogger]:
    cfg = recipe.config.trainer.mlflow
    if not cfg.enabled:
        return None
    uri = cfg.tracking_uri or f"sqlite:///{(out / 'mlflow.db').resolve()}"
    logger = MLFlowLogger(experiment_name=cfg.experiment, run_name=cfg.run_name or recipe.config.name,
                          tracking_uri=uri, artifact_location=str((out / "mlartifacts").resolve()))
    logger.log_hyperparams(recipe.flat_params())
    logger.experiment.log_text(logger.run_id, recipe.to_yaml(), "recipe.yaml")
    return logger


def fit(recipe: Recipe) -> FitResult:
    cfg = recipe.config
    out = Path(cfg.output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    module = LightBagelModule(cfg)
    stage = run_pretrain(recipe)  # e.g. the tiny default's VLM: trained once, then reused
    if stage is not None:
        load_parts(module.model, stage, list(cfg.pretrain.parts))
    processor = module.model.und.processor
    gen = module.model.gen
    data = MixtureDataModule(cfg.data, processor, Path(cfg.data.root),
                             vae_multiple=gen.vae.spatial_factor * gen.patch_size[1],
                             batches_per_step=cfg.trainer.accumulate_grad_batches, tasks=objective_tasks(cfg))
    logger = make_logger(recipe, out)
    history = LossHistory()
    tr = cfg.trainer
    callbacks = [
        history,
        SampleGrid(Collator(processor, cfg.data.vit_image_size), out / "samples", tr.sample_every_n_steps,
                   tr.num_sample_images, cfg.data.image_size, tr.sample_steps, cfg.objective.timestep_shift),
        SkippedDataLogger(data.skipped, tr.log_every_n_steps),
        DataMonitor(data, tr.log_every_n_steps),
        ThroughputMonitor(batch_size_fn=len, length_fn=token_counter(module.model),
                          window_size=max(2, tr.log_every_n_steps)),
        checkpoint := AtomicCheckpoint(out / "checkpoints", tr.checkpoint_every_n_steps or max(1, tr.max_steps // 4),
                                       tr.keep_checkpoints),
        NonFiniteGuard(checkpoint, tr.max_nonfinite_steps),
    ]
    if is_sharded(tr):  # sampling a sharded model needs every rank in step: not done during training
        callbacks = [c for c in callbacks if not isinstance(c, SampleGrid)]
    if logger is not None:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if tr.eval_every_n_steps > 0:
        from lightbagel.evaluation.callback import SyntheticEval

        callbacks.append(SyntheticEval(tr.eval_every_n_steps, tr.eval_per_category, tr.sample_steps, out / "eval"))
    trainer = L.Trainer(
        accelerator=tr.accelerator, devices=tr.devices, num_nodes=tr.num_nodes, strategy=make_strategy(tr),
        precision=tr.precision, max_steps=tr.max_steps, log_every_n_steps=tr.log_every_n_steps,
        gradient_clip_val=tr.gradient_clip_val, accumulate_grad_batches=tr.accumulate_grad_batches,
        enable_progress_bar=tr.enable_progress_bar, logger=logger if logger is not None else False,
        callbacks=callbacks, default_root_dir=out, enable_model_summary=True, enable_checkpointing=False,
    )
    last = latest_checkpoint(out / "checkpoints")  # the newest complete one: resume after a crash
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if last is not None else None, weights_only=True)
    export = export_trained(trainer, module, recipe.to_yaml(), out / "export")
    if logger is not None:
        logger.experiment.log_artifact(logger.run_id, str(export))
    return FitResult(out, export, getattr(logger, "run_id", None), getattr(logger, "_tracking_uri", None),
                     history.losses[0] if history.losses else None,
                     history.losses[-1] if history.losses else None)
