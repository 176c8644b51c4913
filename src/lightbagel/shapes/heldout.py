"""The held-out prompts that training's sample grids and the held-out loss score: fixed scenes,
alternating text-to-image and editing."""

from __future__ import annotations

import random

from lightbagel import shapes


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
