"""The LightningModule: flow matching on the fused model, condition dropout, AdamW."""

from __future__ import annotations

from dataclasses import replace

import lightning as L
import torch

from lightbagel.data.collate import TrainBatch
from lightbagel.inputs import TEXT, VIT, UndInputs, gen_inputs
from lightbagel.model import LightBagel, build_model
from lightbagel.recipe.schema import ObjectiveConfig, RecipeConfig
from lightbagel.training import flow_matching as fm


class LightBagelModule(L.LightningModule):
    def __init__(self, recipe: RecipeConfig, model: LightBagel | None = None):
        super().__init__()
        self.recipe = recipe
        self.model = model if model is not None else build_model(recipe)

    def training_step(self, batch: TrainBatch, batch_idx: int) -> torch.Tensor:
        loss, n_tokens = self.flow_matching_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        self.log("train/target_tokens", float(n_tokens), batch_size=len(batch))
        return loss

    def flow_matching_loss(self, batch: TrainBatch) -> tuple[torch.Tensor, int]:
        obj = self.recipe.objective
        und, source_valid = drop_conditions(batch, obj)
        gen = self.model.gen
        with torch.no_grad():
            x0 = gen.vae.encode(batch.target)
            source = gen.vae.encode(batch.source) if bool(source_valid.any()) else None
        t = fm.sample_time(len(batch), obj.timestep_shift, obj.logit_mean, obj.logit_std, device=x0.device)
        noise = torch.randn_like(x0)
        inputs = gen_inputs(fm.interpolate(x0, noise, t), t, source, source_valid, batch.source_order)
        out = self.model(und, inputs)
        n_target = gen.tokens_per_slot(*x0.shape[-2:])
        target = gen.patchify(fm.velocity(x0, noise).unsqueeze(2))
        # Mean over every noisy target token of the batch: each token weighs the same.
        loss = (out.velocity[:, -n_target:].float() - target.float()).pow(2).mean()
        return loss, n_target * len(batch)

    def configure_optimizers(self):
        opt = self.recipe.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps,
                                      weight_decay=opt.weight_decay)
        warmup = max(1, opt.warmup_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def drop_conditions(batch: TrainBatch, obj: ObjectiveConfig) -> tuple[UndInputs, torch.Tensor]:
    """Condition dropout for classifier-free guidance: hide text, ViT or the source's VAE tokens.

    Hidden tokens stay in place but are masked out of every attention, which is exactly how the
    unconditional branches are built at sampling time.
    """
    n, device = len(batch), batch.target.device
    drop_text = torch.rand(n, device=device) < obj.text_dropout
    drop_vit = torch.rand(n, device=device) < obj.vit_dropout
    drop_vae = torch.rand(n, device=device) < obj.vae_dropout
    seg = batch.und.segment
    keep = ~((seg == TEXT) & drop_text[:, None]) & ~((seg == VIT) & drop_vit[:, None])
    return replace(batch.und, keep=keep), batch.has_source & ~drop_vae
