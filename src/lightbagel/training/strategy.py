"""Lightning strategies by recipe name; `fsdp2` is ModelParallelStrategy over one data-parallel mesh.

The names live once, in registry.py's `STRATEGY`, which points at the builders here; recipe
validation reads the same registry without importing this module.

Launch: `torchrun` or SLURM set the ranks (docs/distributed.md); Lightning spawns the processes
itself only for a single-node run started as a plain script.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

from lightbagel.recipe.schema import TrainerConfig
from lightbagel.registry import STRATEGY

if TYPE_CHECKING:
    from lightning.pytorch.strategies import Strategy


def auto(tr: TrainerConfig) -> str:
    return "auto"


def ddp(tr: TrainerConfig) -> str:
    return "ddp"


def fsdp2(tr: TrainerConfig) -> Strategy:
    from lightbagel.training.sharding import FSDP2Strategy  # Lightning and FSDP: only when a run uses them

    return FSDP2Strategy()


def make_strategy(tr: TrainerConfig) -> Union[str, Strategy]:
    return STRATEGY.get(tr.strategy)(tr)


def is_sharded(tr: TrainerConfig) -> bool:
    return tr.strategy == "fsdp2"
