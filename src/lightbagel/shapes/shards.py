"""The shapes world as webdataset shards, written once and streamed back.

Sample schema (one tar member per field, all sharing the sample's ``__key__``,
e.g. ``sample00000042``):

``task.txt``
    ``"t2i"``, ``"edit"`` or ``"und"``.
``json``
    metadata: ``{"index": int, "seed": int, "task": str, "image_size": int,
    "target_scene": Scene dict, "source_scene": Scene dict or null}`` (und: the
    image's scene is ``target_scene``).
``caption.txt`` (t2i only)
    the caption of ``target_scene``.
``source.png`` and ``instruction.txt`` (edit only)
    the image before the edit and the instruction that turns it into the target.
``target.png`` (t2i and edit)
    the image to generate: RGB PNG, ``image_size`` x ``image_size``.
``image.png`` and ``conversation.json`` (und only)
    the scene and a chat about it: questions with exact answers (shapes/questions.py).

Shards are named ``shapes-%06d.tar``; ``manifest.json`` next to them records the
generation parameters, so an identical second call reuses them.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import webdataset as wds
from PIL import Image
from webdataset.cache import StreamingOpen

from lightbagel import shapes
from lightbagel.data.images import to_rgb
from lightbagel.errors import DataError
from lightbagel.shapes import questions

log = logging.getLogger(__name__)

SHARD_PATTERN = "shapes-%06d.tar"
MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # bump when the generator changes, to invalidate cached shards
TASKS = ("t2i", "edit", "und")
REQUIRED_KEYS = {
    "t2i": ("json", "caption.txt", "target.png"),
    "edit": ("json", "source.png", "instruction.txt", "target.png"),
    "und": ("json", "image.png", "conversation.json"),
}
UND_TURNS = 6  # questions per und sample
PROGRESS_MIN_SAMPLES = 2000


# ----------------------------------------------------------------------------- writing


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _pick_task(rng: random.Random, weights: dict[str, float]) -> str:
    threshold, total = rng.random() * sum(weights.values()), 0.0
    for task in TASKS:
        total += weights.get(task, 0.0)
        if threshold < total:
            return task
    return max(weights, key=weights.__getitem__)  # float round-off at the top end


def make_sample(index: int, seed: int, image_size: int, weights: dict[str, float]) -> dict:
    """Sample ``index`` of the stream; it depends only on its own arguments."""
    sample_seed = seed * 1_000_003 + index
    rng = random.Random(sample_seed)
    task = _pick_task(rng, weights)
    scene = shapes.sample_scene(rng)
    meta: dict[str, Any] = {
        "index": index, "seed": sample_seed, "task": task, "image_size": image_size
    }
    sample = {"__key__": f"sample{index:08d}", "task.txt": task}
    if task == "und":
        meta.update(target_scene=scene.to_dict(), source_scene=None)
        sample["image.png"] = _png(shapes.render(scene, image_size))
        sample["conversation.json"] = json.dumps(questions.conversation(rng, scene, UND_TURNS))
        sample["json"] = json.dumps(meta, sort_keys=True)
        return sample
    if task == "t2i":
        meta.update(target_scene=scene.to_dict(), source_scene=None)
        sample["caption.txt"] = shapes.caption(scene)
    else:
        instruction, target = shapes.sample_edit(rng, scene)
        meta.update(target_scene=target.to_dict(), source_scene=scene.to_dict())
        sample["source.png"] = _png(shapes.render(scene, image_size))
        sample["instruction.txt"] = instruction
        scene = target
    sample["target.png"] = _png(shapes.render(scene, image_size))
    sample["json"] = json.dumps(meta, sort_keys=True)
    return sample


def _check_weights(weights: dict[str, float]) -> dict[str, float]:
    unknown = set(weights) - set(TASKS)
    if unknown or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise DataError(f"data.task_weights: {weights}: tasks are {TASKS}, weights >= 0 with a positive sum")
    return {task: float(weights.get(task, 0.0)) for task in TASKS}


def _progress(items: Iterable[int], total: int) -> Iterable[int]:
    if total < PROGRESS_MIN_SAMPLES:
        return items
    if not sys.stderr.isatty():  # a log file: one line, not a flood of redrawn bar frames
        print(f"writing {total} shapes-world samples as shards", file=sys.stderr, flush=True)
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, total=total, desc="shapes shards", unit="sample")


def _cached_shards(out_dir: Path, params: dict) -> list[str] | None:
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("params") != params:
        return None
    paths = [out_dir / name for name in manifest.get("shards", [])]
    if not paths or not all(p.is_file() for p in paths):
        return None
    return [str(p) for p in paths]


def _write_into(tmp_dir: Path, params: dict, num_samples: int, per_shard: int) -> list[str]:
    pattern = os.path.join(str(tmp_dir).replace("%", "%%"), SHARD_PATTERN)
    # mtime=0 makes the tar bytes reproducible for a given seed.
    with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0, mtime=0) as writer:
        for index in _progress(range(num_samples), num_samples):
            writer.write(
                make_sample(index, params["seed"], params["image_size"], params["task_weights"])
            )
    return sorted(p.name for p in tmp_dir.glob("shapes-*.tar"))


def _publish(tmp_dir: Path, out_dir: Path, names: list[str], params: dict) -> None:
    # Drop the old manifest first: a crash half way must not leave a manifest
    # that describes a mix of old and new shards.
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for stale in out_dir.glob("shapes-*.tar"):
        stale.unlink()
    for name in names:
        os.replace(tmp_dir / name, out_dir / name)
    manifest = {"params": params, "shards": names, "num_shards": len(names)}
    (tmp_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp_dir / MANIFEST, out_dir / MANIFEST)


def write_shapes_shards(
    out_dir: str | os.PathLike,
    num_samples: int,
    image_size: int,
    task_weights: dict[str, float] | None = None,
    seed: int = 0,
    samples_per_shard: int = 1000,
) -> list[str]:
    """Write ``num_samples`` shapes-world samples as shards; return their paths.

    Deterministic for a given seed. If ``out_dir`` already holds shards made with
    the same parameters they are returned as they are (a cache). Shards are
    written into a temporary folder inside ``out_dir`` and moved into place, so
    readers never see a half-written shard. ``task_weights`` defaults to
    ``{"t2i": 0.7, "edit": 0.3}``.
    """
    if num_samples < 1 or image_size < 8 or samples_per_shard < 1:
        raise DataError(f"shapes shards need num_samples >= 1, image_size >= 8, samples_per_shard >= 1; got "
                        f"{num_samples}, {image_size}, {samples_per_shard}")
    weights = _check_weights({"t2i": 0.7, "edit": 0.3} if task_weights is None else task_weights)
    params = {
        "format_version": FORMAT_VERSION,
        "num_samples": num_samples,
        "image_size": image_size,
        "task_weights": weights,
        "seed": seed,
        "samples_per_shard": samples_per_shard,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cached = _cached_shards(out, params)
    if cached is not None:
        return cached
    tmp_dir = Path(tempfile.mkdtemp(prefix=".tmp-shapes-", dir=out))
    try:
        names = _write_into(tmp_dir, params, num_samples, samples_per_shard)
        _publish(tmp_dir, out, names, params)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return [str(out / name) for name in names]


# ----------------------------------------------------------------------------- reading


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
        log.debug("skipped shapes input (%s): %s", reason, message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)


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


class _TarEndCheck:
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


class _CheckedOpen(StreamingOpen):
    def __call__(self, urls: Iterable[Any]) -> Iterable[dict]:
        for source in super().__call__(urls):
            source["stream"] = _TarEndCheck(source["stream"], source["url"])
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

