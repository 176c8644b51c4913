"""LightningDataModule over the shapes world's webdataset shards."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import lightning as L
from torch.utils.data import DataLoader, IterableDataset

from lightbagel.backbones.understanding.base import UndProcessor
from lightbagel.data.collate import Collator
from lightbagel.data.shards import SkipCounter, read_shapes_samples, write_shapes_shards
from lightbagel.recipe.schema import DataConfig

log = logging.getLogger(__name__)


class EndlessShards(IterableDataset):
    """Streams the shards epoch after epoch, reshuffled per epoch; training is step-bounded."""

    def __init__(self, urls: list[str], cfg: DataConfig, counter: SkipCounter):
        self.urls, self.cfg, self.counter = urls, cfg, counter

    def __iter__(self) -> Iterator[dict]:
        epoch = 0
        while True:
            seen = 0
            for sample in read_shapes_samples(self.urls, self.cfg.shuffle_buffer, self.cfg.seed + epoch, self.counter):
                seen += 1
                yield sample
            if seen == 0:
                raise RuntimeError(f"no readable samples in {len(self.urls)} shards: {self.counter.as_dict()}")
            epoch += 1


class ShapesDataModule(L.LightningDataModule):
    def __init__(self, cfg: DataConfig, processor: UndProcessor, root: Path):
        super().__init__()
        self.cfg, self.processor, self.root = cfg, processor, root
        self.skipped = SkipCounter()
        self.urls: list[str] = []

    def prepare_data(self) -> None:
        # Rank 0 only: writes the shards once; later runs find them cached by the manifest.
        self._write()

    def setup(self, stage: str) -> None:
        self.urls = self._write()

    def _write(self) -> list[str]:
        cfg = self.cfg
        # At least one shard per DataLoader worker, so that no worker is left without data.
        per_shard = min(1000, -(-cfg.num_samples // max(1, cfg.num_workers)))
        return write_shapes_shards(self.root, cfg.num_samples, cfg.image_size, dict(cfg.task_weights),
                                   seed=cfg.seed, samples_per_shard=per_shard)

    def train_dataloader(self) -> DataLoader:
        cfg = self.cfg
        return DataLoader(
            EndlessShards(self.urls, cfg, self.skipped),
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            collate_fn=Collator(self.processor, cfg.vit_image_size),
            persistent_workers=cfg.num_workers > 0,
        )
