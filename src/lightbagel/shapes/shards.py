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
import tempfile
from pathlib import Path
from typing import Any, Iterable

import webdataset as wds
from PIL import Image

from lightbagel import shapes
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
