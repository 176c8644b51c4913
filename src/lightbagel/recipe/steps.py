"""What one optimizer step holds: the global tokens per step, and the gradient accumulation that
gives them on a given number of ranks.

The paper trains ~35B tokens in 70K steps, ~0.5M tokens per step (arXiv 2510.22946; docs/distributed.md):
a recipe states that figure once as `trainer.tokens_per_step`, and accumulation follows from the ranks
at hand, so 8 GPUs and 32 GPUs train the same run.
"""

from __future__ import annotations

from lightbagel.errors import LightBagelError
from lightbagel.recipe.schema import RecipeConfig, TrainerConfig


class StepSizeError(LightBagelError, ValueError):
    """A tokens-per-step figure the ranks at hand cannot give, in one line."""


def world_size(tr: TrainerConfig) -> int:
    """Ranks of the run: `devices` (a count or a list of ids) times `num_nodes`."""
    devices = tr.devices
    if isinstance(devices, int) and devices > 0:
        count = devices
    elif isinstance(devices, (int, str)):  # "auto" or -1: every device Lightning finds
        import torch

        count = max(1, torch.cuda.device_count()) if tr.accelerator in ("gpu", "cuda", "auto") else 1
    else:  # a list of device ids
        count = len(devices)
    return count * tr.num_nodes


def accumulation(cfg: RecipeConfig, world: int) -> int:
    """Micro-batches per optimizer step: `trainer.tokens_per_step` over `world` ranks of
    `data.packing.token_budget` tokens each, or `trainer.accumulate_grad_batches` without it."""
    tr, budget = cfg.trainer, cfg.data.packing.token_budget
    if tr.tokens_per_step is None:
        return tr.accumulate_grad_batches
    if budget is None:
        raise StepSizeError(f"trainer.tokens_per_step {tr.tokens_per_step} needs data.packing.token_budget "
                            "(tokens per rank and micro-batch); set it, or trainer.tokens_per_step=null")
    if tr.accumulate_grad_batches != 1:
        raise StepSizeError(f"trainer.tokens_per_step {tr.tokens_per_step} fixes the accumulation; remove trainer."
                            f"accumulate_grad_batches {tr.accumulate_grad_batches} (or set tokens_per_step=null)")
    per_micro = world * budget
    steps, left = divmod(tr.tokens_per_step, per_micro)
    if steps < 1 or left:
        raise StepSizeError(f"trainer.tokens_per_step {tr.tokens_per_step} is not a multiple of {world} ranks x "
                            f"data.packing.token_budget {budget} = {per_micro}; use a rank count that divides it, "
                            f"or trainer.tokens_per_step={max(1, round(tr.tokens_per_step / per_micro)) * per_micro}")
    return steps
