"""`fit(recipe)`: the whole training job, from a validated recipe to an exported model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ThroughputMonitor
from omegaconf import OmegaConf

from lightbagel.data.chat import ChatBatch
from lightbagel.data.collate import Collator, size_groups
from lightbagel.data.datamodule import MixtureDataModule
from lightbagel.data.monitor import DataMonitor
from lightbagel.errors import CheckpointError
from lightbagel.inference.guidance import TASK_DEFAULTS
from lightbagel.model_folder import EXPORT, point_export, version_dir, write_info
from lightbagel.recipe import Recipe
from lightbagel.recipe.steps import accumulation, world_size
from lightbagel.runs.folder import check_resume, folder_lock, is_rank_zero, write_record
from lightbagel.runs.tracking import ActiveTime, make_logger
from lightbagel.threads import apply_threads
from lightbagel.training.callbacks import SampleGrid, SkippedDataLogger
from lightbagel.training.checkpoint_export import export_trained
from lightbagel.training.checkpointing import AtomicCheckpoint, checkpoint_recipe, newest_loadable
from lightbagel.training.console import PlainProgress, StepBar, banner, checkpoint_every, interactive, silence_noise
from lightbagel.training.module import LightBagelModule, objective_tasks
from lightbagel.training.nan_guard import NonFiniteGuard
from lightbagel.training.preflight import preflight
from lightbagel.training.stages import is_complete, load_parts, stage_recipe
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
    experiment_id: Optional[str] = None


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
        if isinstance(batch, ChatBatch):  # an und batch: the VLM's tokens only
            return int(batch.und.attention_mask.sum())
        return sum(_group_tokens(group) for group in size_groups(batch))

    def _group_tokens(batch) -> int:
        h, w = batch.target.shape[-2:]
        per_image = model.gen.tokens_per_slot(h // factor, w // factor)
        return int(batch.und.attention_mask.sum()) + per_image * (len(batch) + int(batch.has_source.sum()))

    return count


def fit(recipe: Recipe, run_name: Optional[str] = None, threads: Optional[int] = None) -> FitResult:
    """Trains `recipe` into its output folder, resuming the run there when the recipe matches it
    (runs/folder.py); `run_name` names a new MLflow run (default: the recipe's name); `threads` is the
    command's --threads (lightbagel/threads.py). A recipe with a pretrain stage (training/stages.py)
    has the stage trained first, before its own model is built."""
    silence_noise()
    apply_threads(threads, recipe.config.trainer.num_threads)
    preflight(recipe.config)  # GPUs and model sources, before any stage, folder, lock or weight
    stage = run_pretrain(recipe)  # opt-in (recipes/tiny_pretrained.yaml): trained once, then reused
    out = Path(recipe.config.output_dir)
    with folder_lock(out):
        return _fit(recipe, out, run_name, stage)


def run_pretrain(recipe: Recipe, say: Callable[[str], None] = print) -> Optional[Path]:
    """Trains the recipe's pretrain stage unless its export is already there; returns that export."""
    stage = stage_recipe(recipe)
    if stage is None:
        return None
    export = Path(stage.config.output_dir) / EXPORT
    if is_complete(export, stage):
        say(f"pretrain: reusing {export} (a finished run of {stage.path.name}); delete it to retrain")
        return export
    say(f"pretrain: no finished run of {stage.path.name} at {export}; training it first (once)")
    fit(stage)
    parts = ", ".join(recipe.config.pretrain.parts)
    say(f"pretrain: {stage.path.name} done; {recipe.config.name} starts from its {parts}")
    return export


def resume_point(dirpath: Path, tr) -> Optional[Path]:
    """The newest complete checkpoint that reads back (resume after a crash), if this run's strategy
    can load it: a sharded one (a directory) needs fsdp2, a single file any other strategy."""
    last = newest_loadable(dirpath)
    if last is not None and last.is_dir() != is_sharded(tr):
        written = "sharded, by trainer.strategy=fsdp2" if last.is_dir() else "as one file, by a non-sharded strategy"
        raise CheckpointError(f"{last} was written {written}; this run has trainer.strategy={tr.strategy}: "
                              "resume with the strategy that wrote it, or use another output_dir")
    return last


def _fit(recipe: Recipe, out: Path, run_name: Optional[str], stage: Optional[Path]) -> FitResult:
    cfg = recipe.config
    accumulate = accumulation(cfg, world_size(cfg.trainer))  # a one-line error before anything is built
    last = resume_point(out / "checkpoints", cfg.trainer)
    plain = OmegaConf.to_container(recipe.resolved)
    record = check_resume(out, plain, last is not None, checkpoint_recipe(last) if last is not None else None)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = LightBagelModule(cfg)
    if stage is not None:
        load_parts(module.model, stage, list(cfg.pretrain.parts))
    processor = module.model.und.processor
    gen = module.model.gen
    data = MixtureDataModule(cfg.data, processor, Path(cfg.data.root),
                             vae_multiple=gen.vae_multiple,
                             batches_per_step=accumulate, tasks=objective_tasks(cfg))
    logger = make_logger(recipe, out, (record or {}).get("mlflow_run_id"), run_name)
    if is_rank_zero():
        write_record(out, plain, getattr(logger, "run_id", None))
    history = LossHistory()
    tr = cfg.trainer
    callbacks = [history, *_callbacks(cfg, module, data, out, logger is not None)]
    trainer = L.Trainer(
        accelerator=tr.accelerator, devices=tr.devices, num_nodes=tr.num_nodes, strategy=make_strategy(tr),
        precision=module.precision.precision.lightning, max_steps=tr.max_steps, log_every_n_steps=tr.log_every_n_steps,
        gradient_clip_val=tr.gradient_clip_val, accumulate_grad_batches=accumulate,
        enable_progress_bar=_bar(tr), logger=logger if logger is not None else False,
        callbacks=callbacks, default_root_dir=out, enable_model_summary=False, enable_checkpointing=False,
    )
    run_id, uri = getattr(logger, "run_id", None), getattr(logger, "tracking_uri", None)
    if trainer.is_global_zero:
        print(banner(recipe, out, last, module, run_id, uri), flush=True)
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if last is not None else None, weights_only=True)
    export = _export(trainer, module, recipe, out, run_id, trained=bool(history.losses))
    if logger is not None and history.losses:
        logger.experiment.log_artifacts(logger.run_id, str(export), f"exports/{export.name}")
    return FitResult(out, out / EXPORT, run_id, uri,
                     history.losses[0] if history.losses else None,
                     history.losses[-1] if history.losses else None, getattr(logger, "experiment_id", None))


def _export(trainer, module, recipe: Recipe, out: Path, run_id: Optional[str], trained: bool) -> Path:
    """This fit's export, `exports/step-N`, and `export` pointed at it; an earlier fit's export is
    never rewritten (a rerun that trained nothing finds its step's export already there)."""
    version = version_dir(out, trainer.global_step)
    written = trainer.strategy.broadcast((version / "model.safetensors").is_file())  # rank 0's disk decides
    if trained or not written:
        export_trained(trainer, module, recipe.to_yaml(), version)
    if trainer.is_global_zero:
        write_info(version, step=trainer.global_step, mlflow_run_id=run_id, recipe=str(recipe.path),
                   understanding_trained=not recipe.config.understanding_is_random())
        point_export(out, version)
    return version


def _bar(tr) -> bool:
    """A redrawn bar only in a terminal (PlainProgress prints lines elsewhere)."""
    return tr.enable_progress_bar and interactive()


def sample_steps(tr) -> int:
    """The training grids' and in-training eval's steps: the recipe's, else the sampler's t2i default."""
    return tr.sample_steps or TASK_DEFAULTS["t2i"]["steps"]


def _callbacks(cfg, module: LightBagelModule, data, out: Path, logged: bool) -> list[L.Callback]:
    """Every side concern of the loop but the loss history: samples, data and throughput monitors,
    checkpoints, the non-finite guard, plain progress lines in a log file, eval."""
    tr, processor = cfg.trainer, module.model.und.processor
    callbacks = [
        SampleGrid(Collator(processor, cfg.data.vit_image_size), out / "samples", tr.sample_every_n_steps,
                   tr.num_sample_images, cfg.data.image_size, sample_steps(tr), cfg.objective.timestep_shift),
        SkippedDataLogger(data.skipped, tr.log_every_n_steps),
        DataMonitor(data, tr.log_every_n_steps),
        ThroughputMonitor(batch_size_fn=len, length_fn=token_counter(module.model),
                          window_size=max(2, tr.log_every_n_steps)),
        checkpoint := AtomicCheckpoint(out / "checkpoints", checkpoint_every(tr), tr.keep_checkpoints),
        NonFiniteGuard(checkpoint, tr.max_nonfinite_steps),
    ]
    if is_sharded(tr):  # sampling a sharded model needs every rank in step: not done during training
        callbacks = [c for c in callbacks if not isinstance(c, SampleGrid)]
    if _bar(tr):
        callbacks.append(StepBar())
    elif not interactive():  # a log file: plain lines instead of a redrawn bar
        callbacks.append(PlainProgress(tr.log_every_n_steps))
    if logged:
        callbacks += [LearningRateMonitor(logging_interval="step"), ActiveTime()]
    if tr.eval_every_n_steps > 0:
        from lightbagel.evaluation.callback import SyntheticEval

        callbacks.append(SyntheticEval(tr.eval_every_n_steps, tr.eval_per_category, sample_steps(tr), out / "eval"))
    return callbacks
