"""Reads the shapes shards back as records: the tests' check of what `write_shapes_shards` wrote.

Training streams the same shards through the general pipeline (lightbagel/data/streams.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable

import webdataset as wds
from PIL import Image
from webdataset.cache import StreamingOpen

from lightbagel.data.images import to_rgb
from lightbagel.data.skips import SkipCounter, TarEndCheck
from lightbagel.shapes.shards import REQUIRED_KEYS

log = logging.getLogger(__name__)


@dataclass
class _CountAndContinue:
    """A webdataset exception handler: count the error, skip the item, go on.

    A class rather than a closure so that pipelines stay picklable for spawned workers.
    """

    counter: SkipCounter
    reason: str

    def __call__(self, exn: BaseException) -> bool:
        self.counter.add(self.reason, repr(exn))
        return True


@dataclass
class _HasRequiredKeys:
    """Select predicate run before decoding, so dropped samples cost no PNG decode."""

    counter: SkipCounter

    def __call__(self, sample: dict) -> bool:
        task = sample.get("task.txt")
        if task is None:
            self.counter.add("missing_key", f"{sample.get('__key__')}: ['task.txt']")
            return False
        task = (task.decode("utf-8", "replace") if isinstance(task, bytes) else str(task)).strip()
        if task not in REQUIRED_KEYS:
            self.counter.add("bad_task", f"{sample.get('__key__')}: task {task!r}")
            return False
        missing = [key for key in REQUIRED_KEYS[task] if key not in sample]
        if missing:
            self.counter.add("missing_key", f"{sample.get('__key__')}: {missing}")
            return False
        return True


class _CheckedOpen(StreamingOpen):
    def __call__(self, urls: Iterable[Any]) -> Iterable[dict]:
        for source in super().__call__(urls):
            source["stream"] = TarEndCheck(source["stream"], source["url"])
            yield source


def _check_tar_ends(dataset: wds.WebDataset, handler: _CountAndContinue) -> None:
    for i, stage in enumerate(dataset.pipeline):
        if type(stage) is StreamingOpen:
            dataset.pipeline[i] = _CheckedOpen(handler=handler)
            return
    # e.g. WDS_CACHE set: webdataset then opens shards through its file cache.
    log.warning("no StreamingOpen stage; truncated shards may end silently")


def _rgb(image: Any) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a decoded image, got {type(image).__name__}")
    return to_rgb(image)


def _to_record(sample: dict) -> dict:
    task = sample["task.txt"].strip()
    meta = sample["json"]
    if not isinstance(meta, dict):
        raise TypeError("json metadata is not an object")
    is_edit = task == "edit"
    if task == "und":
        turns = sample["conversation.json"]
        return {"key": sample["__key__"], "task": task, "conversation": turns, "image": _rgb(sample["image.png"]),
                "text": "\n".join(t["content"] for t in turns if t["role"] == "user"), "meta": meta}
    return {
        "key": sample["__key__"],
        "task": task,
        "text": (sample["instruction.txt"] if is_edit else sample["caption.txt"]).strip(),
        "target": _rgb(sample["target.png"]),
        "source": _rgb(sample["source.png"]) if is_edit else None,
        "meta": meta,
    }


def read_shapes_samples(
    urls: str | list[str],
    shuffle_buffer: int = 0,
    seed: int = 0,
    counter: SkipCounter | None = None,
) -> wds.WebDataset:
    """Stream shapes-world samples as dicts with keys ``key``, ``task``, ``text``
    (caption or instruction), ``target`` and ``source`` (PIL RGB; ``source`` is
    None for t2i) and ``meta``.

    Broken input never raises: unreadable or truncated shards, undecodable
    fields and samples missing a required field are skipped and counted in
    ``counter``. Splitting: shards are split across DataLoader workers
    (``split_by_worker``) but not across distributed nodes (``nodesplitter=None``):
    every rank reads every shard, since a run on this world usually has fewer
    shards than ranks x workers. Workers without a shard just yield nothing
    (``empty_check=False``). ``shuffle_buffer`` > 0 shuffles samples in a buffer
    of that size, seeded by ``seed``.
    """
    counter = SkipCounter() if counter is None else counter
    on_shard_error = _CountAndContinue(counter, "shard")
    dataset = wds.WebDataset(
        urls,
        handler=on_shard_error,
        shardshuffle=False,
        nodesplitter=None,
        workersplitter=wds.split_by_worker,
        empty_check=False,
        seed=seed,
    )
    _check_tar_ends(dataset, on_shard_error)
    if shuffle_buffer > 0:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed)
    dataset = dataset.select(_HasRequiredKeys(counter))
    dataset = dataset.decode("pil", handler=_CountAndContinue(counter, "decode"))
    dataset = dataset.map(_to_record, handler=_CountAndContinue(counter, "record"))
    return dataset.compose(_drop_webdataset_keys)


def _drop_webdataset_keys(records: Iterable[dict]) -> Iterable[dict]:
    # webdataset's map() puts "__key__" back into every dict; "key" already has it.
    for record in records:
        yield {k: v for k, v in record.items() if not k.startswith("__")}
