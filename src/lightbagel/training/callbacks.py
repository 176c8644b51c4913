"""Side concerns of the training loop: sample image grids and the skipped-data count."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from PIL import Image

from lightbagel.data.collate import Collator, tensor_to_image
from lightbagel.evaluation.grid import captioned_grid
from lightbagel.inference.sampler import sample_latents
from lightbagel.shapes.heldout import validation_samples


@torch.no_grad()
def render_samples(model, collator: Collator, samples: list[dict], steps: int, shift: float,
                   guidance: float, seed: int = 0) -> Image.Image:
    """Rows: source (blank for T2I), generated, reference; the prompt under each column."""
    batch = collator(samples)
    device = next(model.parameters()).device
    gen = model.gen
    x0 = gen.vae.encode(batch.target.to(device))
    source = gen.vae.encode(batch.source.to(device))
    latents = sample_latents(
        model, batch.und.to(device), tuple(x0.shape), steps=steps, shift=shift, text_guidance=guidance,
        source=source, source_valid=batch.has_source.to(device), source_order=batch.source_order.to(device),
        generator=torch.Generator(device).manual_seed(seed),
    )
    images = gen.vae.decode(latents)
    blank = Image.new("RGB", samples[0]["target"].size, (255, 255, 255))
    return captioned_grid([
        [s["source"] or blank for s in samples],
        [tensor_to_image(x) for x in images],
        [s["target"] for s in samples],
    ], [s["text"] for s in samples])


class SampleGrid(L.Callback):
    """Every N steps (and at the end) samples the held-out prompts and logs the grid."""

    def __init__(self, collator: Collator, out_dir: Path, every_n_steps: int, num_images: int,
                 image_size: int, steps: int, shift: float, guidance: float = 2.0):
        self.collator, self.out_dir, self.every = collator, out_dir, every_n_steps
        self.samples = validation_samples(num_images, image_size)
        self.steps, self.shift, self.guidance = steps, shift, guidance

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every > 0 and trainer.global_step % self.every == 0:
            self._log(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._log(trainer, pl_module)

    def _log(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        was_training = pl_module.training
        pl_module.eval()
        grid = render_samples(pl_module.model, self.collator, self.samples, self.steps, self.shift, self.guidance)
        pl_module.train(was_training)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        name = f"step_{trainer.global_step:06d}.png"
        grid.save(self.out_dir / name)
        logger = trainer.logger
        if logger is not None and hasattr(logger, "run_id") and hasattr(logger.experiment, "log_image"):
            logger.experiment.log_image(logger.run_id, grid, artifact_file=f"samples/{name}")


class SkippedDataLogger(L.Callback):
    """Reports how many corrupt samples the data pipeline skipped (never fatal)."""

    def __init__(self, counter, every_n_steps: int):
        self.counter, self.every = counter, max(1, every_n_steps)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            pl_module.log("mixture/skipped", float(self.counter.total), batch_size=len(batch))
