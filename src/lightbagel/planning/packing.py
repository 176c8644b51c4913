"""How much of what the trainer computes is real: a sample of the recipe's own data pipeline.

Batches come from the recipe's mixture (its shards, bucketing and token budget, docs/data.md),
collated with the meta-built model's processor: image token counts are exact; text is tokenised
by the built-in tokenizer when the card's checkpoint is not read (a count near the real one).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Optional

from lightbagel.model import LightBagel
from lightbagel.packing import layout_tokens
from lightbagel.recipe.schema import RecipeConfig


@dataclass(frozen=True)
class PackingSample:
    batches: int
    samples: int
    real: int  # prompt tokens and DiT tokens of real image slots: what a packed row computes
    padded: int  # token slots padded rows compute for the same batches
    budget: Optional[int]  # data.packing.token_budget
    layout: str  # data.packing.layout: what the trainer builds
    max_tokens: Optional[int] = None  # data.packing.max_tokens
    mixed: int = 0  # batches holding several image sizes (packed rows of every size)

    @property
    def padded_fraction(self) -> float:
        return self.real / self.padded

    @property
    def budget_fill(self) -> Optional[float]:
        return None if self.budget is None else self.real / self.batches / self.budget

    @property
    def cap_fill(self) -> Optional[float]:
        return None if self.max_tokens is None else self.real / self.batches / self.max_tokens


def sample_packing(recipe: RecipeConfig, model: LightBagel, batches: int) -> PackingSample:
    """Counts `batches` batches of the recipe's pipeline (one rank, in the main process)."""
    from lightbagel.data.datamodule import MixtureDataModule
    from lightbagel.training.module import objective_tasks

    multiple = model.gen.vae_multiple
    dm = MixtureDataModule(replace(recipe.data, num_workers=0), model.und.processor, vae_multiple=multiple,
                           tasks=objective_tasks(recipe))
    dm.prepare_data()
    dm.setup("fit")
    real = padded = samples = mixed = 0
    for batch in itertools.islice(iter(dm.train_dataloader()), batches):
        real += sum(layout_tokens(batch, multiple, "packed"))
        padded += sum(layout_tokens(batch, multiple, "padded"))
        samples += len(batch)
        mixed += len(getattr(batch, "groups", ())) > 1
    packing = recipe.data.packing
    return PackingSample(batches, samples, real, padded, packing.token_budget, packing.layout, packing.max_tokens,
                         mixed)

