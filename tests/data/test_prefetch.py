"""Batches prepared on a background thread: the same stream, errors on the training thread, and a
producer that stops when the training loop lets go of it."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
from test_resume import _roundtrip, card, consume, module  # noqa: F401  (card is a fixture)

from lightbagel.data.prefetch import Prefetcher
from lightbagel.errors import DataError


@pytest.mark.parametrize("workers", [0, 2])
def test_prefetched_batches_are_the_pipelines_own_in_order(card, workers):  # noqa: F811
    plain = module(card, workers).train_dataloader().loader  # the DataLoader the thread reads
    dm = module(card, workers)
    assert consume(dm, 12) == [b.data_state["keys"] for b in itertools.islice(plain, 12)]
    assert dm.consumed == 12  # counted as the loop takes them, not as the thread makes them


def test_one_worker_streams_and_resumes_exactly_as_none(card):  # noqa: F811
    """`data.num_workers` 0 -> 1 changes where batches are made, never which: a checkpoint of a run
    without workers resumes with one at the exact next samples."""
    none = consume(module(card, 0), 14)
    assert consume(module(card, 1), 14) == none
    first = module(card, 0)
    before = consume(first, 6)
    resumed = module(card, 1)
    resumed.load_state_dict(_roundtrip(first.state_dict()))
    assert before + consume(resumed, 8) == none


def _failing():
    yield 1
    yield 2
    raise DataError("data source 'a': no readable samples")


def test_a_pipeline_error_is_raised_on_the_training_thread_after_the_batches_before_it():
    it = iter(Prefetcher(_failing()))
    assert [next(it), next(it)] == [1, 2]
    with pytest.raises(DataError, match="data source 'a': no readable samples"):
        next(it)


def test_a_finite_loader_ends_the_iteration():
    assert list(Prefetcher(range(5), depth=2)) == [0, 1, 2, 3, 4]


HANG_GUARD_S = 60  # only so that a regression fails instead of hanging; no verdict waits on time


def test_the_producer_stops_when_the_iterator_is_dropped():
    it = iter(Prefetcher(itertools.count(), depth=2))
    assert next(it) == 0
    thread = it.thread
    del it  # what the training loop does at the end of fit
    thread.join(HANG_GUARD_S)  # a producer told to stop returns within one poll of its full queue
    assert not thread.is_alive()


def test_nothing_starts_before_the_first_batch_is_asked_for():
    """Lightning calls `iter` once to check the loader: that iterator must not draw batches."""
    drawn = []
    loader = Prefetcher(map(drawn.append, itertools.count()))
    it = iter(loader)
    assert it.thread is None and drawn == []  # no producer exists that could draw one
    next(it)
    assert it.thread is not None and drawn


def test_depth_below_one_is_refused():
    with pytest.raises(ValueError, match="prefetch depth must be >= 1, got 0"):
        Prefetcher(range(3), depth=0)


def _slow_count():
    for i in itertools.count():
        time.sleep(0.05)  # the producer is mostly inside the source, making a batch
        yield i


def test_close_stops_and_joins_every_producer_before_it_returns():
    """A daemon producer still in a torch op at interpreter exit aborts the process, so `close`
    (the datamodule's teardown) returns only once every producer thread has ended."""
    loader = Prefetcher(_slow_count(), depth=1)
    it = iter(loader)
    assert next(it) == 0
    loader.close()
    assert not it.thread.is_alive()


def test_close_joins_a_producer_whose_iterator_is_gone():
    """Lightning drops its iterator when fit ends, before the datamodule's teardown: the producer,
    still making the next batch, must be joined all the same (else it may still be inside a torch op
    when the interpreter exits: "terminate called without an active exception", rc 134)."""
    making, release = threading.Event(), threading.Event()

    def batches():
        yield 0
        making.set()
        release.wait()  # the producer is inside the source, making batch 1
        yield 1

    loader = Prefetcher(batches(), depth=1)
    it = iter(loader)
    assert next(it) == 0
    making.wait()
    thread = it.thread
    del it  # what the training loop does at the end of fit
    joined, join = [], thread.join
    thread.join = lambda timeout=None: (joined.append(timeout), join(timeout))
    release.set()
    loader.close()
    assert joined and not thread.is_alive()


@pytest.mark.parametrize("hook", ["teardown", "on_exception"])
def test_the_datamodule_joins_its_producers_when_fit_ends_or_stops(card, hook):  # noqa: F811
    """Lightning calls `teardown` when fit ends and `on_exception` when it stops (SIGTERM, Ctrl-C, an
    error): either way no prefetch thread outlives it."""
    dm = module(card, 0)
    it = iter(dm.train_dataloader())
    next(it)
    getattr(dm, hook)("fit" if hook == "teardown" else RuntimeError("stopped"))
    assert not it.thread.is_alive()
