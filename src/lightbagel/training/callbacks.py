"""Side concerns of the training loop: sample image grids and the skipped-data count."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from PIL import Image, ImageDraw, ImageFont

from lightbagel import shapes
from lightbagel.data.collate import Collator, tensor_to_image
from lightbagel.inference.sampler import sample_latents


def validation_samples(n: int, image_size: int, seed: int = 1234) -> list[dict]:
    """A fixed set of held-out prompts, alternating text-to-image and editing."""
    rng, samples = random.Random(seed), []
    for i in range(n):
        scene = shapes.sample_scene(rng)
        if i % 2 == 0:
            samples.append({"text": shapes.caption(scene), "source": None, "target": shapes.render(scene, image_size)})
        else:
            instruction, edited = shapes.sample_edit(rng, scene)
            samples.append({"text": instruction, "source": shapes.render(scene, image_size),
                            "target": shapes.render(edited, image_size)})
    return samples


def image_grid(rows: Sequence[Sequence[Image.Image]], pad: int = 2) -> Image.Image:
    w, h = rows[0][0].size
    cols = max(len(r) for r in rows)
    grid = Image.new("RGB", (cols * (w + pad) + pad, len(rows) * (h + pad) + pad), (255, 255, 255))
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            grid.paste(image, (pad + j * (w + pad), pad + i * (h + pad)))
    return grid


def captioned_grid(rows: Sequence[Sequence[Image.Image]], captions: Sequence[str], scale: int = 4,
                   pad: int = 2) -> Image.Image:
    """`image_grid` with pixels enlarged `scale` times (nearest: no blur hides the detail) and the
    prompt of each column written under it, wrapped to the column's width."""
    big = [[im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in row] for row in rows]
    grid = image_grid(big, pad)
    width = big[0][0].width
    font = ImageFont.load_default()
    chars = max(4, width // max(1, int(font.getlength("m"))))
    lines = [textwrap.wrap(text, chars) or [""] for text in captions]
    line_h = font.getbbox("Ay")[3] + 2
    canvas = Image.new("RGB", (grid.width, grid.height + line_h * max(map(len, lines)) + pad), (255, 255, 255))
    canvas.paste(grid, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for j, wrapped in enumerate(lines):
        for k, line in enumerate(wrapped):
            draw.text((pad + j * (width + pad), grid.height + k * line_h), line, fill=(0, 0, 0), font=font)
    return canvas


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
