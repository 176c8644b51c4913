"""Batches prepared ahead by a thread of the training process, off the training thread's path.

A DataLoader with `num_workers: 0` prepares each batch on the training thread, between steps
(~8-13 ms of a ~250 ms tiny CPU step); with workers, the training thread still unpickles each
batch from shared memory (one file descriptor per tensor: ~4 ms a batch, more on a busy CPU).
`Prefetcher` moves either onto a background thread that keeps `depth` batches ready; the training
thread only takes them from a queue. Measured in docs/data.md ("Loading off the training thread").

The order of batches is the loader's; nothing is recorded as consumed until the training loop takes
a batch (MixtureDataModule.on_before_batch_transfer), so resume stays exact. `Prefetcher.close`
(the datamodule's teardown and on_exception) stops and joins every producer, also one whose iterator
is gone: a daemon thread still inside a torch op while the interpreter exits aborts the process
("terminate called without an active exception").
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterable, Iterator, Optional

_BATCH, _END, _ERROR = range(3)
_POLL_S = 0.1  # how often a blocked producer checks whether the consumer went away
_JOIN_S = 30.0  # the longest `close` waits for a producer to finish the batch it is making


class Prefetcher:
    """Iterable over `loader`'s batches, each iterator with its own producer thread."""

    def __init__(self, loader: Iterable, depth: int = 2):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.loader, self.depth = loader, depth
        # Every producer started and not yet ended, held by its thread, not by its iterator: Lightning
        # drops its iterator when fit ends, and a producer still making a batch must be joined all the same.
        self._producers: list[tuple[threading.Event, threading.Thread]] = []

    def __iter__(self) -> "PrefetchIterator":
        return PrefetchIterator(self.loader, self.depth, self._producers)

    def close(self) -> None:
        """Stops every producer thread and waits for it to end (the datamodule's teardown)."""
        producers, self._producers[:] = list(self._producers), []
        for stop, _ in producers:
            stop.set()
        for _, thread in producers:
            if thread is not threading.current_thread():
                thread.join(_JOIN_S)


class PrefetchIterator:
    """Starts at the first `next`: Lightning calls `iter` once only to check that it can, and two
    threads must never draw from one (persistent) DataLoader iterator."""

    def __init__(self, loader: Iterable, depth: int, producers: Optional[list] = None):
        self.loader = loader
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self.thread: Optional[threading.Thread] = None
        self._producers = producers if producers is not None else []

    def __iter__(self) -> "PrefetchIterator":
        return self

    def _start(self) -> None:
        source = iter(self.loader)  # on the calling thread: DataLoader workers fork from it, not from ours
        self.thread = threading.Thread(target=_produce, args=(source, self._queue, self._stop),
                                       name="data-prefetch", daemon=True)
        self.thread.start()
        self._producers[:] = [(stop, t) for stop, t in self._producers if t.is_alive()]  # ended ones: nothing to join
        self._producers.append((self._stop, self.thread))

    def __next__(self) -> Any:
        if self.thread is None:
            self._start()
        kind, item = self._queue.get()
        if kind == _ERROR:
            self.close()
            raise item
        if kind == _END:
            self.close()
            raise StopIteration
        return item

    def close(self, wait: bool = False) -> None:
        """Stops the producer (it drops the source, which shuts down DataLoader workers); with
        `wait`, also waits until its thread has ended."""
        self._stop.set()
        thread = self.thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_S)

    def __del__(self) -> None:
        self.close()


def _produce(source: Iterator, out: queue.Queue, stop: threading.Event) -> None:
    try:
        for item in source:
            if not _put(out, stop, (_BATCH, item)):
                return
        _put(out, stop, (_END, None))
    except BaseException as error:  # raised on the training thread, by the next `next`
        _put(out, stop, (_ERROR, error))


def _put(out: queue.Queue, stop: threading.Event, entry: tuple) -> bool:
    while not stop.is_set():
        try:
            out.put(entry, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False
