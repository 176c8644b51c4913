"""One source's endless stream of raw samples for one (rank, worker) slot, resumable by a cursor.

Splitting: each epoch the source's shards are shuffled (seeded by source and epoch) and dealt
round-robin to the ``rank x worker`` slots. A source with fewer shards than slots is split by
sample instead: every slot reads every shard and keeps every ``n_slots``-th sample.

Shuffling is by blocks: ``block_size`` consecutive samples of the slot's stream are read and
permuted (seeded by the block's start). Unlike a reservoir buffer, a block's content depends on
nothing before it, so the stream position is a small cursor
``[epoch, shard_pos, offset, index]``: the block starts at sample ``offset`` of the slot's
``shard_pos``-th shard and ``index`` of its samples were already taken. Seeking re-reads one block.
"""

from __future__ import annotations

import glob
import logging
import random
import tarfile
from dataclasses import dataclass
from typing import Iterator

import webdataset as wds
from braceexpand import braceexpand
from webdataset.tariterators import base_plus_ext

from lightbagel.data.skips import SkipCounter, TarEndCheck
from lightbagel.errors import DataError

log = logging.getLogger(__name__)

Cursor = list[int]  # [epoch, shard_pos, offset, index]; a list so checkpoints stay plain data


def expand_urls(patterns: list[str]) -> list[str]:
    """Brace patterns and globs -> shard URLs; other strings (pipe:, http:) are kept as given."""
    urls: list[str] = []
    for pattern in patterns:
        for url in braceexpand(pattern):
            if any(c in url for c in "*?[") and "://" not in url and not url.startswith("pipe:"):
                urls += sorted(glob.glob(url))
            else:
                urls.append(url)
    return urls


@dataclass(frozen=True)
class Slot:
    """This reader's place among all readers: ``index = rank * workers + worker``."""

    index: int = 0
    count: int = 1


def read_shard(url: str, counter: SkipCounter | None) -> Iterator[dict]:
    """Raw samples (field -> bytes) of one tar shard; an unreadable or truncated shard is counted
    (unless `counter` is None) and ends early instead of raising."""
    try:
        stream = TarEndCheck(wds.gopen(url), url)
    except Exception as exn:
        if counter is not None:
            counter.add("unreadable_shard", f"{url}: {exn!r}")
        return
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            current: dict | None = None
            for info in tar:
                prefix, suffix = base_plus_ext(info.name) if info.isreg() else (None, None)
                if prefix is None or suffix is None:
                    continue
                data = tar.extractfile(info).read()
                tar.members = []  # streaming: do not keep every header
                if current is not None and current["__key__"] != prefix:
                    yield current
                    current = None
                current = current or {"__key__": prefix, "__url__": url}
                current[suffix.lower()] = data
            if current is not None:
                yield current
    except Exception as exn:  # truncated stream, bad header: the rest of this shard is lost
        if counter is not None:
            counter.add("truncated_shard", f"{url}: {exn!r}")
    finally:
        stream.close()


class SourceStream:
    """Endless, block-shuffled raw samples of one source for one slot."""

    def __init__(self, name: str, urls: list[str], slot: Slot, seed: int, block_size: int,
                 counter: SkipCounter):
        if not urls:
            raise DataError(f"data source {name!r}: no shards; check its urls in the data card")
        self.name, self.urls, self.slot, self.seed = name, urls, slot, seed
        self.block_size, self.counter = max(1, block_size), counter
        self.start: list[int] = [0, 0, 0]  # [epoch, shard_pos, offset] of the current block
        self.index = 0
        self.block: list[dict] | None = None
        self.after: list[int] = [0, 0, 0]  # position just past the current block
        self.reader: Iterator[tuple[dict, list[int]]] | None = None

    @property
    def cursor(self) -> Cursor:
        return [*self.start, self.index]

    def seek(self, cursor: Cursor) -> None:
        self.start, self.index, self.block = list(cursor[:3]), int(cursor[3]), None
        self.reader = None

    def next(self) -> dict:
        if self.block is None:
            self._load()
        while self.index >= len(self.block):
            self.start, self.index = list(self.after), 0
            self._load()
        sample = self.block[self.index]
        self.index += 1
        return sample

    def _load(self) -> None:
        # The reader continues from the previous block; only a seek starts a new one there.
        if self.reader is None:
            self.reader = self._raw(*self.start)
        block = []
        for sample, after in self.reader:
            block.append(sample)
            self.after = after
            if len(block) == self.block_size:
                break
        random.Random(f"{self.seed}:{self.name}:{self.slot.index}:{self.start}").shuffle(block)
        self.block = block

    def shards(self, epoch: int) -> tuple[list[str], bool]:
        """This slot's shards in ``epoch``, and whether it must also split them by sample."""
        order = list(self.urls)
        random.Random(f"{self.seed}:{self.name}:epoch{epoch}").shuffle(order)
        if len(order) >= self.slot.count:
            return order[self.slot.index :: self.slot.count], False
        return order, True

    def _raw(self, epoch: int, shard_pos: int, offset: int) -> Iterator[tuple[dict, list[int]]]:
        """(sample, position after it) from a position on, endlessly."""
        empty_epochs = 0
        while True:
            shards, by_sample = self.shards(epoch)
            # Split by sample, every slot reads every shard: only slot 0 counts a bad shard, so a
            # pass counts it once, not once per reader.
            counter = self.counter if not by_sample or self.slot.index == 0 else None
            found = False
            for pos in range(shard_pos, len(shards)):
                skip = offset if pos == shard_pos else 0
                for i, sample in enumerate(read_shard(shards[pos], counter)):
                    if i < skip or (by_sample and i % self.slot.count != self.slot.index):
                        continue
                    found = True
                    yield sample, [epoch, pos, i + 1]
            empty_epochs = 0 if found else empty_epochs + 1
            if empty_epochs >= 2:  # a whole epoch without one sample: never going to get any
                raise DataError(
                    f"data source {self.name!r}: no readable samples for slot {self.slot.index} "
                    f"of {self.slot.count}; skipped so far: {self.counter.as_dict()}")
            epoch, shard_pos, offset = epoch + 1, 0, 0
