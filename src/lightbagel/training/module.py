"""The LightningModule: flow matching on the fused model, condition dropout, AdamW; optionally the
understanding objective (answer-token cross-entropy of the VLM) on `und` batches.

Side concerns of scaling out live in their own modules and are applied in `configure_model`
(FSDP2, activation checkpointing: sharding.py; EMA: ema.py; LoRA: lora.py).
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace
from pathlib import Path
from typing import Optional

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from lightbagel import flow_matching as fm
from lightbagel.data.chat import ChatBatch
from lightbagel.data.collate import MixedBatch, TrainBatch, size_groups
from lightbagel.inputs import EDIT_HIDES, TEXT, VIT, UndInputs
from lightbagel.model import LightBagel, build_model
from lightbagel.model_folder import WEIGHTS, check_weights, read_weights
from lightbagel.packing import layout_tokens, row_velocities
from lightbagel.precision import apply_precision, refuse_bf16_masters, training_plan
from lightbagel.recipe.schema import ObjectiveConfig, OptimConfig, RecipeConfig
from lightbagel.training.ema import EMAWeights
from lightbagel.training.flops import stream_weights, train_flops
from lightbagel.training.lora import add_lora
from lightbagel.training.randomness import draw, sample_seeds
from lightbagel.training.sharding import model_units, parallelize, shard_plan

# Running statistics of the VAE posterior means (LightBagelModule.vae_loss): about the last 100 batches.
LATENT_MOMENTS_DECAY = 0.99


class LightBagelModule(L.LightningModule):
    def __init__(self, recipe: RecipeConfig, model: LightBagel | None = None):
        super().__init__()
        self.recipe = recipe
        check_objective(recipe)
        self.model = model if model is not None else build_model(recipe)
        if recipe.init_from:
            load_init(self.model, recipe.init_from)
        if recipe.trainer.lora.enabled:
            add_lora(self.model, recipe.trainer.lora)
        self.precision = training_plan(recipe.trainer, self.model)
        refuse_bf16_masters(self.model, self.precision, recipe.trainer)
        self.ema: Optional[EMAWeights] = None
        self.nonfinite_total = self.nonfinite_streak = 0
        self.flops_per_batch: Optional[int] = None  # read by ThroughputMonitor for MFU
        if recipe.objective.vae_weight > 0:  # in the checkpoint, so a resumed run keeps them
            channels = self.model.gen.vae.latent_channels
            self.register_buffer("latent_moments", torch.zeros(2, channels))
            self.register_buffer("latent_moments_seen", torch.zeros((), dtype=torch.bool))
        self._configured = False

    def configure_model(self) -> None:
        """Storage dtypes (precision.py), FSDP2 under ModelParallelStrategy (`self.device_mesh` set),
        activation checkpointing, EMA."""
        if self._configured:  # Lightning may call it again (e.g. validate after fit)
            return
        tr = self.recipe.trainer
        units = model_units(self.model)
        self._weights = stream_weights(self.model, units[0].modules, units[1].modules)
        mesh = self.device_mesh["data_parallel"] if self.device_mesh is not None else None
        apply_precision(self.model, self.precision)
        parallelize(self.model, units, shard_plan(tr, self.precision), mesh)
        if tr.ema.enabled:
            self.ema = EMAWeights(self.model, tr.ema.decay)
        self._configured = True

    def training_step(self, batch: TrainBatch | MixedBatch | ChatBatch, batch_idx: int) -> Optional[torch.Tensor]:
        loss, logged = self.weighted_loss(batch, batch_idx)
        # What backward sees: every token of the global batch weighs the same (docs/distributed.md).
        # The tokens are every noisy target token of the batch, all its image sizes together; the
        # VAE objective alone counts none and keeps the plain mean over ranks.
        tokens = logged.get("train/target_tokens", logged.get("train/answer_tokens"))
        scaled = loss if tokens is None else loss * global_token_weight(tokens, batch_device(batch))
        if not self._all_ranks_finite(loss):
            # Skipped on every rank alike (no backward, no optimizer step), counted, and stopped
            # by NonFiniteGuard after `trainer.max_nonfinite_steps` in a row.
            self.nonfinite_total += 1
            self.nonfinite_streak += 1
            self.log("train/nonfinite_steps", float(self.nonfinite_total), batch_size=len(batch))
            return None
        self.nonfinite_streak = 0
        writes, shows = self._logging_now()
        # MLflow's run page orders chart sections by name: "loss" comes before "mixture" (data) and
        # "train" (throughput), so the loss chart is the first a reader sees.
        if writes or shows:
            self.log("loss/train", loss, prog_bar=True, batch_size=len(batch))
        for name, value in logged.items() if writes else ():  # loss/flow or loss/und, and its tokens
            self.log(name, value, batch_size=len(batch))
        if self._configured:
            self.flops_per_batch = self._batch_flops(batch)
        return scaled

    def _logging_now(self) -> tuple[bool, bool]:
        """(Whether Lightning writes this step's values, whether a progress bar shows its loss.)
        Lightning writes a step's values only every `trainer.log_every_n_steps` (the test its own
        monitors use); each `self.log` costs ~0.7 ms, so the other steps skip the calls."""
        trainer = self._trainer
        if trainer is None:
            return True, False
        return trainer._logger_connector.should_update_logs, trainer.progress_bar_callback is not None

    def _batch_flops(self, batch: TrainBatch | MixedBatch | ChatBatch) -> int:
        multiple = self.model.gen.vae_multiple
        return train_flops(self._weights, *layout_tokens(batch, multiple, self.recipe.data.packing.layout))

    def weighted_loss(self, batch: TrainBatch | ChatBatch, batch_idx: int) -> tuple[torch.Tensor, dict]:
        """The recipe-weighted loss of a batch and what to log beside it. The data pipeline never
        mixes `und` samples with image samples, so a batch trains one objective."""
        obj = self.recipe.objective
        if isinstance(batch, ChatBatch):
            loss, n_answer = self.understanding_loss(batch)
            return obj.und_weight * loss, {"loss/und": loss.detach(), "train/answer_tokens": float(n_answer)}
        total, logged = 0.0, {}
        if obj.flow_weight > 0:
            loss, n_tokens = self.flow_matching_loss(batch, self._seeds(batch, batch_idx))
            total = obj.flow_weight * loss
            logged.update({"loss/flow": loss.detach(), "train/target_tokens": float(n_tokens)})
        if obj.vae_weight > 0:
            l1, kl = self.vae_losses(batch)
            total = total + obj.vae_weight * (l1 + obj.vae_kl_weight * kl)
            logged.update({"loss/vae_l1": l1.detach(), "loss/vae_kl": kl.detach()})
        return total, logged

    def vae_losses(self, batch: TrainBatch | MixedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """`vae_loss` of every image size of the batch, weighted by its pixels: the means over
        every pixel and every latent value of the batch."""
        groups = size_groups(batch)
        if len(groups) == 1:
            return self.vae_loss(groups[0])
        pixels = [(len(g) + int(g.has_source.sum())) * g.target[0].numel() for g in groups]
        parts = [self.vae_loss(g) for g in groups]
        return tuple(sum(part[i] * n for part, n in zip(parts, pixels)) / sum(pixels) for i in range(2))

    def vae_loss(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE objective on every image of the batch (targets and shown sources): the mean L1
        error of the decoded posterior sample, and the posterior's KL to N(0, 1) per latent value.
        Keeps a running per-channel mean and std of the posterior means: the normalisation the
        exported codec writes into its config (`trained_recipe`), as Wan's `latents_mean/std`."""
        images = torch.cat([batch.target, batch.source[batch.has_source]])
        decoded, kl, mean = self.model.gen.vae.reconstruct(images)
        with torch.no_grad():
            moments = torch.stack([mean.mean(dim=(0, 2, 3)), mean.pow(2).mean(dim=(0, 2, 3))])
            if not self.latent_moments_seen:
                self.latent_moments.copy_(moments)
            self.latent_moments.lerp_(moments, 1 - LATENT_MOMENTS_DECAY)
            self.latent_moments_seen.fill_(True)
        return (decoded - images.float()).abs().mean(), kl

    def trained_recipe(self) -> RecipeConfig:
        """The recipe an export rebuilds the model from: with the VAE objective on, the codec's
        config carries the latent statistics measured while it trained (Wan normalises latents by
        its config's `latents_mean` / `latents_std`, so the DiT then diffuses unit-scale latents)."""
        if self.recipe.objective.vae_weight <= 0:
            return self.recipe
        mean, second = self.latent_moments.double()
        std = (second - mean.pow(2)).clamp_min(1e-12).sqrt()
        vae = self.recipe.generation.vae
        config = {**vae.config, "latents_mean": [round(v, 6) for v in mean.tolist()],
                  "latents_std": [round(v, 6) for v in std.tolist()]}
        generation = replace(self.recipe.generation, vae=replace(vae, config=config))
        return replace(self.recipe, generation=generation)

    def understanding_loss(self, batch: ChatBatch) -> tuple[torch.Tensor, int]:
        """Next-token cross-entropy of the VLM alone on the answer tokens (the mean over them)."""
        logits = self.model.vlm_logits(batch.und)
        return answer_loss(logits, batch.und.input_ids, batch.answer_mask), int(batch.answer_mask[:, 1:].sum())

    def _seeds(self, batch: TrainBatch | MixedBatch, batch_idx: int) -> list[int]:
        """Per-sample keys: (seed, micro-step, global sample index); see randomness.py."""
        accumulate = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        micro_step = self.global_step * accumulate + batch_idx % accumulate
        first = first_global_index(len(batch), batch_device(batch))
        return sample_seeds(self.recipe.seed, micro_step, first, len(batch))

    def _all_ranks_finite(self, loss: torch.Tensor) -> bool:
        finite = torch.isfinite(loss.detach()).float()
        if _distributed():
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        return bool(finite.item())

    def flow_matching_loss(self, batch: TrainBatch | MixedBatch,
                           seeds: Optional[list[int]] = None) -> tuple[torch.Tensor, int]:
        """With `seeds`, every random draw of sample i comes from seeds[i]; else from torch's RNG.
        A batch of several image sizes runs as one packed row (or padded rows size by size)."""
        inputs, targets, first = [], [], 0
        for group in size_groups(batch):
            noised, target = self._noised(group, None if seeds is None else seeds[first:first + len(group)])
            inputs.append(noised)
            targets.append(target)
            first += len(group)
        velocities = row_velocities(self.model, inputs, self.recipe.data.packing.layout)  # packing.py
        # Mean over every noisy target token of the batch: each token weighs the same.
        errors = [(v.float() - t.float()).pow(2).flatten() for v, t in zip(velocities, targets)]
        loss = (errors[0] if len(errors) == 1 else torch.cat(errors)).mean()
        return loss, sum(t.shape[0] * t.shape[1] for t in targets)

    def _noised(self, batch: TrainBatch, seeds: Optional[list[int]]) -> tuple[tuple, torch.Tensor]:
        """One image size's model inputs (und, noisy, t, sources, source_valid, source_order) and
        its (B, per_slot, P) velocity targets."""
        obj = self.recipe.objective
        gen = self.model.gen
        with torch.no_grad():
            x0 = gen.vae.encode(batch.target)
        draws = draw(seeds, tuple(x0.shape[1:]), x0.device, x0.dtype) if seeds is not None else None
        und, source_valid = drop_conditions(batch, obj, None if draws is None else draws.uniform)
        with torch.no_grad():  # only the sources a sample shows: absent and dropped ones are never seen
            sources = gen.vae.encode(batch.source[source_valid]) if bool(source_valid.any()) else None
        if draws is None:
            t = fm.sample_time(len(batch), obj.timestep_shift, obj.logit_mean, obj.logit_std, device=x0.device)
            noise = torch.randn_like(x0)
        else:
            normal = draws.normal * obj.logit_std + obj.logit_mean
            t, noise = fm.shift_time(torch.sigmoid(normal), obj.timestep_shift), draws.noise
        inputs = (und, fm.interpolate(x0, noise, t), t, sources, source_valid, batch.source_order)
        return inputs, gen.patchify(fm.velocity(x0, noise).unsqueeze(2))

    def on_before_optimizer_step(self, optimizer) -> None:
        # Trainable weights the loss never reaches (e.g. the und-side output of the last fusion
        # blocks) get zero gradients: AdamW then holds state for every weight, which a sharded
        # checkpoint needs to resume on another number of ranks. A zero gradient moves nothing.
        # The optimizer's list is every trainable weight, without walking the module tree each step.
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.model)

    def configure_optimizers(self):
        opt = self.recipe.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        # One fused kernel per step instead of a dozen per tensor (0.86 against 3.57 ms per tiny step on
        # CPU, docs/overhead.md): torch fuses AdamW on CPU and CUDA (torch.optim.AdamW, `fused`).
        # Lightning's mixed-precision plugin refuses to clip gradients for a fused optimizer (it could
        # unscale them inside its step: MixedPrecision.clip_gradients), so clipped mixed runs use foreach.
        clipped_mixed = self.precision.mixed and bool(self.recipe.trainer.gradient_clip_val)
        fused = not clipped_mixed and all(p.device.type in ("cpu", "cuda") for p in params)
        optimizer = torch.optim.AdamW(params, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps,
                                      weight_decay=opt.weight_decay, fused=fused)
        factor = lr_factor(opt, self.recipe.trainer.max_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Everything `lightbagel-export` needs to rebuild the model from the checkpoint alone.
        checkpoint["recipe_yaml"] = self.recipe_yaml
        checkpoint["nonfinite"] = {"total": self.nonfinite_total, "streak": self.nonfinite_streak}

    @functools.cached_property
    def recipe_yaml(self) -> str:
        """The recipe as YAML, made once (~50 ms): it does not change while training."""
        return OmegaConf.to_yaml(OmegaConf.structured(self.recipe))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        counts = checkpoint.get("nonfinite", {})
        self.nonfinite_total = counts.get("total", 0)
        self.nonfinite_streak = counts.get("streak", 0)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def batch_device(batch: TrainBatch | MixedBatch | ChatBatch) -> torch.device:
    return batch.answer_mask.device if isinstance(batch, ChatBatch) else size_groups(batch)[0].target.device


def global_token_weight(local_tokens: float, device: torch.device) -> float:
    """world * local / global tokens: a rank's mean loss times this, averaged over ranks by FSDP's
    gradient reduction, is the mean over every token of the global batch. Ranks hold different
    token counts under a token budget; BAGEL divides the summed loss by the all-reduced token count
    (train/pretrain_unified_navit.py), torchtitan by `global_valid_tokens`."""
    if not _distributed():
        return 1.0
    total = torch.tensor([float(local_tokens)], device=device, dtype=torch.float64)
    torch.distributed.all_reduce(total)
    return torch.distributed.get_world_size() * float(local_tokens) / max(float(total.item()), 1.0)


def first_global_index(n: int, device: torch.device) -> int:
    """The global index of this rank's first sample: the sizes of the ranks before it, summed. Ranks'
    batch sizes differ under a token budget, so `rank * n` would give two ranks the same keys."""
    if not _distributed():
        return 0
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(sizes, torch.tensor([n], dtype=torch.int64, device=device))
    return int(sum(int(s.item()) for s in sizes[:torch.distributed.get_rank()]))


def _cosine(opt: OptimConfig, progress: float) -> float:
    return opt.min_lr_ratio + (1 - opt.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# `optim.schedule` -> the multiplier after warmup, given the fraction of the remaining steps done.
SCHEDULES = {"constant": lambda opt, progress: 1.0, "cosine": _cosine}


def lr_factor(opt: OptimConfig, max_steps: int):
    """The learning-rate multiplier per optimizer step: linear warmup, then constant or cosine."""
    warmup = max(1, opt.warmup_steps)
    after = SCHEDULES[opt.schedule]

    def factor(step: int) -> float:
        if step < warmup:
            return min(1.0, (step + 1) / warmup)
        return after(opt, min(1.0, (step - warmup) / max(1, max_steps - warmup)))

    return factor


def check_objective(recipe: RecipeConfig) -> None:
    obj = recipe.objective
    weights = {"flow_weight": obj.flow_weight, "und_weight": obj.und_weight, "vae_weight": obj.vae_weight}
    if min(weights.values()) < 0 or sum(weights.values()) == 0:
        named = ", ".join(f"objective.{k} {v}" for k, v in weights.items())
        raise ValueError(f"{named}: each must be >= 0 and at least one > 0")
    if obj.vae_weight > 0 and recipe.generation.vae.freeze:
        raise ValueError(f"objective.vae_weight {obj.vae_weight} trains the VAE, but generation.vae.freeze is true; "
                         "set generation.vae.freeze=false (or objective.vae_weight=0)")
    if obj.und_weight > 0 and recipe.understanding.freeze and not recipe.trainer.lora.enabled:
        raise ValueError(f"objective.und_weight {obj.und_weight} trains the VLM, but understanding.freeze is true; "
                         "set understanding.freeze=false (or objective.und_weight=0)")


def objective_tasks(recipe: RecipeConfig) -> tuple[str, ...]:
    """The sample tasks the recipe's objectives train; the data pipeline skips the others."""
    obj = recipe.objective
    images = obj.flow_weight > 0 or obj.vae_weight > 0
    return (("t2i", "edit") if images else ()) + (("und",) if obj.und_weight > 0 else ())


def answer_loss(logits: torch.Tensor, input_ids: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting each answer token from the tokens before it.

    logits (B, L, V) at position j predict token j + 1; only tokens with `answer_mask` count, so
    whatever sits at question, image or padding positions never enters the loss as a target.
    """
    keep = answer_mask[:, 1:]
    return F.cross_entropy(logits[:, :-1][keep].float(), input_ids[:, 1:][keep])


def load_init(model: LightBagel, export_dir: str | Path) -> None:
    """Initialises from a `lightbagel-fit` export (`model.safetensors`): fine-tuning a trained model."""
    path = Path(export_dir) / WEIGHTS
    state = read_weights(path)  # a one-line ModelFolderError when missing, truncated or not safetensors
    check_weights(path, state, model)
    model.load_state_dict(state, strict=False)


def drop_conditions(batch: TrainBatch, obj: ObjectiveConfig,
                    uniform: Optional[torch.Tensor] = None) -> tuple[UndInputs, torch.Tensor]:
    """Condition dropout for classifier-free guidance: hide text, ViT or the source's VAE tokens.

    Hidden tokens stay in place but are masked out of every attention, which is exactly how the
    unconditional branches are built at sampling time (a packed row then leaves them out: packing.py).
    `uniform` (B, 3) gives the draws, else torch's RNG does.
    """
    n, device = len(batch), batch.target.device
    if uniform is None:
        uniform = torch.stack([torch.rand(n, device=device) for _ in range(3)], dim=1)
    drop_text = uniform[:, 0] < obj.text_dropout
    # An edit_condition ablation hides one encoder of the source always (see ObjectiveConfig).
    hides = EDIT_HIDES[obj.edit_condition]
    drop_vit = (uniform[:, 1] < obj.vit_dropout) | ("vit" in hides)
    drop_vae = (uniform[:, 2] < obj.vae_dropout) | ("vae" in hides)
    seg = batch.und.segment
    keep = ~((seg == TEXT) & drop_text[:, None]) & ~((seg == VIT) & drop_vit[:, None])
    return replace(batch.und, keep=keep), batch.has_source & ~drop_vae
