"""The LightningDataModule of every recipe: a weighted, staged, bucketed webdataset mixture.

With ``source: shapes`` and no ``sources`` the built-in shapes world is written as shards under
``root`` first and is the one source. State (``state_dict``) is the batches this rank consumed
and each worker role's counters; Lightning stores it in checkpoints, so a resumed run continues
with exactly the batches an uninterrupted run would have seen (same workers and ranks).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import torch.distributed as dist
from torch.utils.data import DataLoader

from lightbagel.backbones.understanding.base import UndProcessor
from lightbagel.data.buckets import ResolutionPolicy
from lightbagel.data.chat import ChatBatch
from lightbagel.data.collate import Collator, MixedBatch, TrainBatch
from lightbagel.data.mixture import Schedule
from lightbagel.data.pipeline import MixtureDataset, MixturePlan, SourceSpec
from lightbagel.data.prefetch import Prefetcher
from lightbagel.data.samples import TRAINABLE
from lightbagel.data.skips import SkipCounter
from lightbagel.data.streams import expand_urls
from lightbagel.errors import DataError
from lightbagel.recipe.schema import DataConfig, SourceConfig
from lightbagel.shapes.shards import write_shapes_shards

log = logging.getLogger(__name__)

STATE_VERSION = 1


def _first(batch: Any) -> Any:
    return batch  # batches are collated inside the workers


class MixtureDataModule(L.LightningDataModule):
    def __init__(self, cfg: DataConfig, processor: UndProcessor, root: Optional[Path] = None, *,
                 vae_multiple: Optional[int] = None, batches_per_step: int = 1,
                 rank: Optional[int] = None, world_size: Optional[int] = None,
                 tasks: Sequence[str] = TRAINABLE):
        super().__init__()
        self.cfg, self.processor, self.tasks = cfg, processor, tuple(tasks)
        self.root = Path(root if root is not None else cfg.root)
        # Pixels per DiT token side: the recipe's, else the model's (GenerationAdapter.vae_multiple).
        self.vae_multiple = cfg.resolution.vae_multiple or vae_multiple
        self.batches_per_step, self._rank, self._world = batches_per_step, rank, world_size
        self.skipped = SkipCounter()  # "source/reason" -> count, summed over this rank's workers
        self.sources: list[SourceConfig] = []
        self.consumed = 0
        self.roles: dict[int, dict] = {}
        self.last_state: Optional[dict] = None
        self._prefetchers: list[Prefetcher] = []  # train_dataloader's, closed by teardown / on_exception

    # ------------------------------------------------------------------ setup
    def prepare_data(self) -> None:
        if self._uses_shapes():  # rank 0 only: later calls find the shards cached
            self._write_shapes()

    def setup(self, stage: str = "fit") -> None:
        self.sources = self._resolve_sources()
        Schedule.build(self.sources, list(self.cfg.stages))  # fail early on a bad card

    def _uses_shapes(self) -> bool:
        return self.cfg.source == "shapes" and not self.cfg.sources

    def _write_shapes(self) -> list[str]:
        cfg = self.cfg
        per_shard = min(1000, -(-cfg.num_samples // max(1, cfg.num_workers)))
        return write_shapes_shards(self.root, cfg.num_samples, cfg.image_size, dict(cfg.task_weights),
                                   seed=cfg.seed, samples_per_shard=per_shard)

    def _resolve_sources(self) -> list[SourceConfig]:
        if self._uses_shapes():
            return [SourceConfig(name="shapes", urls=self._write_shapes(), weight=1.0, task="t2i")]
        if not self.cfg.sources:
            raise DataError(f"data card {self.cfg.card!r}: source is webdataset but `sources` is empty")
        resolved = []
        for src in self.cfg.sources:
            urls = expand_urls(list(src.urls))
            if not urls:
                raise DataError(f"data source {src.name!r}: urls {list(src.urls)} match no shard")
            resolved.append(SourceConfig(name=src.name, urls=urls, weight=src.weight, task=src.task))
        return resolved

    # ------------------------------------------------------------------ loading
    def plan_rank(self) -> tuple[int, int]:
        """(rank, world size): given explicitly, else the trainer's, else a single process."""
        trainer = getattr(self, "trainer", None)
        rank = self._rank if self._rank is not None else (trainer.global_rank if trainer else 0)
        world = self._world if self._world is not None else (trainer.world_size if trainer else 1)
        return rank, world

    def _vae_multiple(self) -> int:
        if not self.vae_multiple:
            raise ValueError("MixtureDataModule needs vae_multiple= (the model's gen.vae_multiple) or "
                             "data.resolution.vae_multiple to size its batches")
        return self.vae_multiple

    def plan(self) -> MixturePlan:
        cfg = self.cfg
        rank, world = self.plan_rank()
        if not self.sources:
            self.setup()
        return MixturePlan(
            sources=[SourceSpec(s.name, tuple(s.urls), s.task) for s in self.sources],
            schedule=Schedule.build(self.sources, list(cfg.stages)),
            policy=ResolutionPolicy(cfg.resolution, self._vae_multiple()),
            collator=Collator(self.processor, cfg.vit_image_size),
            batch_size=cfg.batch_size, token_budget=cfg.packing.token_budget,
            max_wait=cfg.packing.max_wait, block_size=max(1, cfg.shuffle_buffer), seed=cfg.seed, tasks=self.tasks,
            max_tokens=cfg.packing.max_tokens, mix_sizes=cfg.packing.layout == "packed",
            rank=rank, world_size=world, batches_per_step=self.batches_per_step,
            consumed=self.consumed, roles=dict(self.roles),
        )

    def train_dataloader(self) -> Prefetcher:
        workers = self.cfg.num_workers
        loader = DataLoader(MixtureDataset(self.plan()), batch_size=None, num_workers=workers,
                            collate_fn=_first, persistent_workers=workers > 0,
                            prefetch_factor=2 if workers > 0 else None)
        self._prefetchers.append(Prefetcher(loader))  # batches made (or received) off the training thread
        return self._prefetchers[-1]

    def teardown(self, stage: str) -> None:
        self.close_loaders()

    def on_exception(self, exception: BaseException) -> None:  # SIGTERM, Ctrl-C, errors: no teardown call
        self.close_loaders()

    def close_loaders(self) -> None:
        """Stops and joins the prefetch threads before the process can exit under them."""
        while self._prefetchers:
            self._prefetchers.pop().close()

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, (TrainBatch, MixedBatch, ChatBatch)) and batch.data_state is not None:
            self.record(batch.data_state)
        return batch

    def record(self, state: dict) -> None:
        """Note that the training loop consumed the batch carrying ``state``."""
        self.consumed += 1
        self.roles[int(state["role"])] = {k: v for k, v in state.items() if k not in ("sources", "keys")}
        self.last_state = state
        self._update_skipped(warn=True)

    def _update_skipped(self, warn: bool) -> None:
        totals: dict[str, int] = {}
        for role in self.roles.values():
            for source, counts in role["skipped"].items():
                for reason, n in counts.items():
                    totals[f"{source}/{reason}"] = totals.get(f"{source}/{reason}", 0) + n
        for key, n in totals.items():
            before = self.skipped.counts.get(key, 0)
            if warn and n > before:
                log.warning("data: skipped %d more of %s (%d so far; each bad sample or shard counts once per "
                            "pass over the data)", n - before, key, n)
        self.skipped.counts = totals

    # ------------------------------------------------------------------ resume
    def _rank_state(self) -> dict[str, Any]:
        workers = max(1, self.cfg.num_workers)
        return {"consumed": self.consumed, "roles": [self.roles.get(r) for r in range(workers)]}

    def state_dict(self) -> dict[str, Any]:
        # Every rank's stream differs, but only rank 0 writes the checkpoint: gather them all.
        ranks = [self._rank_state()]
        if dist.is_available() and dist.is_initialized():
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, self._rank_state())
        return {"version": STATE_VERSION, "workers": max(1, self.cfg.num_workers),
                "batches_per_step": self.batches_per_step, "ranks": ranks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        workers, (rank, world) = max(1, self.cfg.num_workers), self.plan_rank()
        if state.get("version") != STATE_VERSION or state.get("workers") != workers:
            raise DataError(f"cannot resume the data stream: the checkpoint has {state.get('workers')} "
                             f"data workers, this run {workers}; set data.num_workers={state.get('workers')}")
        # Each rank's stream position is its own: on another rank count some would be lost or
        # invented. Every rank sees the same gathered list, so every rank refuses alike.
        if len(state["ranks"]) != world:
            raise DataError(f"cannot resume the data stream: the checkpoint was written by {len(state['ranks'])} "
                             f"rank(s), this run has {world}; resume with the same trainer.devices x num_nodes")
        mine = state["ranks"][rank]
        self.consumed = int(mine["consumed"])
        self.roles = {r: s for r, s in enumerate(mine["roles"]) if s is not None}
        self._update_skipped(warn=False)

