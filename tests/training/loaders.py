"""A resumable loader of fixed batches, for tests that train outside lightbagel-fit (whose
DataModule stores its own stream position, docs/distributed.md)."""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

import lightning as L


class ResumableLoader:
    """Wraps a deterministic iterable of batches; a resumed run skips the batches already trained.

    `FastForward` sets `skip` from the checkpoint before the first batch is drawn, so batch k of
    a resumed run is batch k of an uninterrupted one.
    """

    def __init__(self, batches: Iterable):
        self.batches, self.skip = batches, 0

    def __iter__(self) -> Iterator:
        it = iter(self.batches)
        for _ in range(self.skip):
            next(it)
        yield from it


class FastForward(L.Callback):
    """Saves how many batches were trained; on resume, makes `loader` skip them.

    Callback states load before the fit loop draws its first (prefetched) batch, and the count
    comes from the optimizer step, not from batches drawn, which run ahead by the prefetch.
    """

    def __init__(self, loader: ResumableLoader):
        self.loader = loader
        self._trainer: Optional[L.Trainer] = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict:
        if self._trainer is None:
            return {}
        return {"batches": self._trainer.global_step * self._trainer.accumulate_grad_batches}

    def load_state_dict(self, state_dict: dict) -> None:
        self.loader.skip = state_dict.get("batches", 0)
