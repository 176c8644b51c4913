"""Skipped input, counted by reason: the data pipeline never stops on a corrupt sample (docs/data.md)."""

from __future__ import annotations

import logging
import tarfile
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)




@dataclass
class SkipCounter:
    """Counts skipped input by reason; keeps the last few messages for debugging.

    Counts are per process: with DataLoader workers each worker updates its own copy.
    """

    counts: dict[str, int] = field(default_factory=dict)
    last_errors: list[str] = field(default_factory=list)
    keep_errors: int = 10

    def add(self, reason: str, message: str = "") -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.last_errors = [*self.last_errors, f"{reason}: {message}"][-self.keep_errors :]
        log.debug("skipped input (%s): %s", reason, message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)


class TarEndCheck:
    """Read-only file wrapper that raises at end of file unless the tar
    end-of-archive marker (two zero blocks) came just before it.

    Python's tarfile treats a stream cut at a header boundary as a normal end,
    which would silently drop the rest of a truncated shard.
    """

    def __init__(self, raw: Any, name: str) -> None:
        self.raw, self.name = raw, name
        self.size, self.tail = 0, b""

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        if data:
            self.size += len(data)
            self.tail = (self.tail + data)[-2 * tarfile.BLOCKSIZE :]
        elif not self._complete():
            raise EOFError(f"truncated tar (no end-of-archive marker): {self.name}")
        return data

    def _complete(self) -> bool:
        whole_blocks = self.size % tarfile.BLOCKSIZE == 0
        return whole_blocks and len(self.tail) == 2 * tarfile.BLOCKSIZE and not any(self.tail)

    def close(self) -> None:
        self.raw.close()
