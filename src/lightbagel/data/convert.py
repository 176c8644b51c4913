"""Writing your own data as shards in the schema of samples.py, and inspecting a mixture."""

from __future__ import annotations

import io
import json
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import webdataset as wds
from PIL import Image
from tqdm.auto import tqdm

from lightbagel.data.buckets import ResolutionPolicy
from lightbagel.data.samples import IMAGE_EXTS, BadSample, to_record
from lightbagel.data.skips import SkipCounter
from lightbagel.data.streams import expand_urls, read_shard
from lightbagel.recipe.schema import DataConfig


def _ext(path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    if ext not in IMAGE_EXTS:
        raise ValueError(f"{path}: not an image ({', '.join(IMAGE_EXTS)})")
    return ext


def write_shards(samples: Iterable[dict], out_dir: Path, prefix: str, per_shard: int, total: int) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    pattern = os.path.join(str(out_dir).replace("%", "%%"), f"{prefix}-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0) as writer:
        # disable=None: no bar frames when stderr is a log file
        for sample in tqdm(samples, total=total, desc=f"writing {prefix} shards", unit="sample", disable=None):
            writer.write(sample)
    return sorted(str(p) for p in out_dir.glob(f"{prefix}-*.tar"))


def image_caption_samples(folder: Path) -> tuple[list[dict], int]:
    """T2I samples from ``IMAGE`` + ``IMAGE-stem.txt`` pairs; images without a caption are left out."""
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTS)
    pairs = [(p, p.with_suffix(".txt")) for p in images if p.with_suffix(".txt").is_file()]
    if not pairs:
        raise ValueError(f"{folder}: no IMAGE + IMAGE.txt caption pairs found")
    return [_lazy(_t2i_sample, i, img, cap) for i, (img, cap) in enumerate(pairs)], len(images) - len(pairs)


def _lazy(fn, *args) -> dict:
    return {"__lazy__": (fn, args)}


class NotAnImage(ValueError):
    """A file named as an image that PIL cannot read: its sample is left out, and said so."""


def _image_bytes(path: Path) -> bytes:
    """The file's bytes once PIL has checked them (header and, for PNG, every chunk's CRC)."""
    data = path.read_bytes()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.open(io.BytesIO(data)).verify()
    except Exception as exn:  # PIL raises many types for bad files
        raise NotAnImage(f"{path}: {type(exn).__name__}") from None
    return data


def _t2i_sample(index: int, image: Path, caption: Path) -> dict:
    return {"__key__": f"{index:09d}", "task.txt": "t2i", f"target.{_ext(image)}": _image_bytes(image),
            "caption.txt": caption.read_text().strip(), "json": json.dumps({"file": str(image)})}


def edit_samples(jsonl: Path) -> list[dict]:
    """Edit samples from JSON lines ``{"source": PATH or [PATHS], "instruction": str, "target": PATH}``;
    relative paths are relative to the JSONL file."""
    samples = []
    for n, line in enumerate(jsonl.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
            samples.append(_lazy(_edit_sample, len(samples), jsonl.parent, sources, row["instruction"], row["target"]))
        except (ValueError, KeyError, TypeError) as exn:
            raise ValueError(f"{jsonl}:{n}: expected {{source, instruction, target}}: {exn}") from None
    return samples


def _edit_sample(index: int, base: Path, sources: list[str], instruction: str, target: str) -> dict:
    sample = {"__key__": f"{index:09d}", "task.txt": "edit", "instruction.txt": instruction,
              "json": json.dumps({"source": sources, "target": target})}
    names = ["source"] if len(sources) == 1 else [f"source_{i}" for i in range(len(sources))]
    for name, path in zip(names, sources):
        sample[f"{name}.{_ext(Path(path))}"] = _image_bytes(base / path)
    sample[f"target.{_ext(Path(target))}"] = _image_bytes(base / target)
    return sample


def materialise(samples: Iterable[dict], left_out: list[str]) -> Iterator[dict]:
    """The samples' bytes, read one at a time; one whose image does not read is noted in `left_out`."""
    for sample in samples:
        fn, args = sample["__lazy__"]
        try:
            yield fn(*args)
        except NotAnImage as exn:
            left_out.append(str(exn))


def inspect_mixture(cfg: DataConfig, urls_by_source: dict[str, list[str]], vae_multiple: int,
                    grid_size: int = 8) -> dict:
    """Counts per source (good and skipped by reason), token lengths and a few records to show."""
    policy = ResolutionPolicy(cfg.resolution, vae_multiple)
    tasks = {s.name: s.task for s in cfg.sources}
    report: dict = {"sources": {}, "tokens": [], "examples": []}
    for name, urls in urls_by_source.items():
        counter, good = SkipCounter(), Counter()
        for url in tqdm(expand_urls(urls), desc=f"reading {name}", unit="shard", disable=None):
            for raw in read_shard(url, counter):
                try:
                    record = to_record(raw, tasks.get(name, "t2i"), cfg.resolution.max_image_pixels)
                except BadSample as exn:
                    counter.add(exn.reason, str(exn))
                    continue
                good[record["task"]] += 1
                report["tokens"].append(_tokens(policy, record))
                if len(report["examples"]) < grid_size and record["target"] is not None:
                    report["examples"].append(record)
        report["sources"][name] = {"tasks": dict(good), "skipped": counter.as_dict()}
    return report


def _tokens(policy: ResolutionPolicy, record: dict) -> int:
    image = record["target"] if record["target"] is not None else (record["sources"] or [None])[0]
    if image is None:
        return len(record["text"].split()) + 1
    size = policy.vae_size(image.size)
    source = record["source"]
    return policy.tokens(size, policy.vit_size(source.size) if source is not None else None, record["text"])


def histogram(values: list[int], bins: int = 10, width: int = 40) -> str:
    if not values:
        return "(no samples)"
    low, high = min(values), max(values)
    step = max(1, -(-(high - low + 1) // bins))
    counts = Counter((v - low) // step for v in values)
    top = max(counts.values())
    bar = {b: "#" * max(1, counts[b] * width // top) for b in counts}
    return "\n".join(f"{low + b * step:>7}-{low + (b + 1) * step - 1:<7} {bar[b]} {counts[b]}" for b in sorted(counts))


def sample_grid(records: list[dict], side: int = 128) -> Image.Image:
    """One column per record: its (first) source image over its target."""
    grid = Image.new("RGB", (side * max(1, len(records)), 2 * side), (255, 255, 255))
    for i, record in enumerate(records):
        if record["sources"]:
            grid.paste(record["sources"][0].resize((side, side)), (i * side, 0))
        grid.paste(record["target"].resize((side, side)), (i * side, side))
    return grid
