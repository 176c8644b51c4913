"""Lightning strategies by recipe name; `fsdp2` is ModelParallelStrategy over one data-parallel mesh.

Launch: `torchrun` or SLURM set the ranks (docs/distributed.md); Lightning spawns the processes
itself only for a single-node run started as a plain script.
"""

from __future__ import annotations

from typing import Callable, Union

from lightning.pytorch.strategies import ModelParallelStrategy, Strategy

from lightbagel.recipe.schema import TrainerConfig


class FSDP2Strategy(ModelParallelStrategy):
    """Every rank of every node shards the model (pure FSDP: data parallel, no tensor parallel).

    ModelParallelStrategy's "auto" sizes give tensor parallelism inside a node; LightBagel's
    blocks are not tensor-parallelised, so the whole world is one data-parallel dimension.
    """

    def __init__(self, **kwargs):
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, save_distributed_checkpoint=True, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


STRATEGIES: dict[str, Callable[[TrainerConfig], Union[str, Strategy]]] = {
    "auto": lambda tr: "auto",
    "ddp": lambda tr: "ddp",
    "fsdp2": lambda tr: FSDP2Strategy(),
}


def make_strategy(tr: TrainerConfig) -> Union[str, Strategy]:
    if tr.strategy not in STRATEGIES:
        raise ValueError(f"trainer.strategy {tr.strategy!r} is unknown; allowed: {', '.join(STRATEGIES)}")
    return STRATEGIES[tr.strategy](tr)


def is_sharded(tr: TrainerConfig) -> bool:
    return tr.strategy == "fsdp2"
