"""Generation runners for public benchmarks: images written where the official scorers look.

Only generation happens here; scoring runs in each benchmark's own repository (detectors, VQA
models or GPT judges we do not ship). Layouts (see docs/inference.md):

- GenEval: `evaluation_metadata.jsonl` -> `<out>/<index:05d>/metadata.jsonl` and
  `<out>/<index:05d>/samples/<k:05d>.png`.
- DPG-Bench: `prompts/<id>.txt` -> `<out>/<id>.png`, a 2x2 grid of four samples (the scorer
  crops it back into `pic_num` images).
- GEdit-Bench: rows with key, task_type, instruction, instruction_language, input_image ->
  `<out>/fullset/<task_type>/<instruction_language>/<key>.png`.
- ImgEdit (basic): `basic_edit.json` {key: {id, prompt, edit_type}} + the image root ->
  `<out>/<key>.png`.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from PIL import Image

from lightbagel.data.images import to_rgb
from lightbagel.progress import track


@dataclass
class Job:
    prompt: str
    outputs: list[Path]  # one file per sample
    sources: tuple = ()  # source images (editing)
    grid: Optional[Path] = None  # DPG-Bench: the samples tiled into this one file


def run_jobs(pipe, jobs: list[Job], config=None, batch_size: int = 8, seed: int = 0, desc: str = "generating",
             size: Optional[int] = None) -> int:
    """Generates every job's samples in batches; image n of the run uses seed + n."""
    flat = [(job, k) for job in jobs for k in range(len(job.outputs))]
    made: dict[int, list[Image.Image]] = {}
    starts = range(0, len(flat), batch_size)
    for start in track(starts, len(starts), f"{desc} batch"):
        chunk = flat[start:start + batch_size]
        out = pipe([j.prompt for j, _ in chunk], images=[list(j.sources) for j, _ in chunk], config=config,
                   seed=[seed + start + i for i in range(len(chunk))], height=size, width=size)
        for (job, k), image in zip(chunk, out.images):
            job.outputs[k].parent.mkdir(parents=True, exist_ok=True)
            image.save(job.outputs[k])
            made.setdefault(id(job), []).append(image)
            if job.grid is not None and len(made[id(job)]) == len(job.outputs):
                _grid(made.pop(id(job))).save(job.grid)
    return len(flat)


def _grid(images: list[Image.Image]) -> Image.Image:
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, image in enumerate(images):
        grid.paste(image, ((i % cols) * w, (i // cols) * h))
    return grid


def _jsonl(path: Path) -> Iterator[dict]:
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not JSON ({err.msg})") from None


def geneval_jobs(metadata: Path, out: Path, samples: int = 4) -> list[Job]:
    jobs = []
    for index, row in enumerate(_jsonl(metadata)):
        if "prompt" not in row:
            raise ValueError(f"{metadata}: line {index + 1} has no 'prompt'")
        folder = out / f"{index:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text(json.dumps(row) + "\n")
        jobs.append(Job(row["prompt"], [folder / "samples" / f"{k:05d}.png" for k in range(samples)]))
    return jobs


def dpg_jobs(prompts_dir: Path, out: Path, samples: int = 4) -> list[Job]:
    files = sorted(prompts_dir.glob("*.txt"))
    if not files:
        raise ValueError(f"{prompts_dir}: no <id>.txt prompt files (DPG-Bench's prompts/ folder)")
    parts = out / "samples"
    return [Job(f.read_text().strip(), [parts / f"{f.stem}_{k}.png" for k in range(samples)],
                grid=out / f"{f.stem}.png") for f in files]


def _open_image(value, base: Path) -> Image.Image:
    """A path (relative to the prompt file), raw bytes, or a parquet image cell {'bytes': ...}."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray)):
        return to_rgb(Image.open(io.BytesIO(value)))
    return to_rgb(Image.open(base / str(value)))


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict("records")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return data if isinstance(data, list) else list(data.values())
    return list(_jsonl(path))


def gedit_jobs(data: Path, out: Path, language: Optional[str] = None) -> list[Job]:
    jobs = []
    for row in _rows(data):
        missing = {"key", "task_type", "instruction", "instruction_language", "input_image"} - set(row)
        if missing:
            raise ValueError(f"{data}: a row lacks {sorted(missing)} (GEdit-Bench fields)")
        if language and row["instruction_language"] != language:
            continue
        target = out / "fullset" / row["task_type"] / row["instruction_language"] / f"{row['key']}.png"
        jobs.append(Job(row["instruction"], [target], (_open_image(row["input_image"], data.parent),)))
    return jobs


def imgedit_jobs(edit_json: Path, image_root: Path, out: Path) -> list[Job]:
    jobs = []
    for key, item in json.loads(edit_json.read_text()).items():
        if not {"id", "prompt"} <= set(item):
            raise ValueError(f"{edit_json}: entry {key!r} needs 'id' and 'prompt' (ImgEdit basic_edit.json)")
        jobs.append(Job(item["prompt"], [out / f"{key}.png"], (_open_image(item["id"], image_root),)))
    return jobs
