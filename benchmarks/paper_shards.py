"""Synthetic webdataset shards at the paper's native image sizes, for `lightbagel-plan --data-sample`.

Images are drawn as benchmarks/packing.py draws them (short side 384-2048 px, the aspect ratios of
`ASPECTS`), 70% T2I and 30% edits, captions of 8-80 words; the pixels are flat colours (only sizes
and token counts matter to the plan). Then the paper recipe's own pipeline counts them:

    .venv/bin/python benchmarks/paper_shards.py /tmp/paper_shards [--samples 800]
    lightbagel-plan recipes/lightbagel_7b_5b.yaml \\
        'data.sources=[{name: t2i, task: t2i, urls: [/tmp/paper_shards/t2i-0000.tar, ...]}, ...]' 'data.stages=[]' \\
        --data-sample 20

(the script prints the exact command).
"""

from __future__ import annotations

import argparse
import io
import random
from pathlib import Path

import webdataset as wds
from packing import ASPECTS
from PIL import Image

WORDS = "a red circle left of a blue square under the green triangle near one small yellow star".split()


def native_size(rng: random.Random) -> tuple[int, int]:
    aw, ah = rng.choice(ASPECTS)
    short = rng.uniform(384, 2048)
    return round(short * aw / min(aw, ah)), round(short * ah / min(aw, ah))


def png(size: tuple[int, int], rng: random.Random) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3))).save(buffer, format="PNG")
    return buffer.getvalue()


def write(out: Path, task: str, n: int, rng: random.Random) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / f"{task}-%04d.tar"), maxcount=200, verbose=0, mtime=0) as writer:
        for i in range(n):
            size, text = native_size(rng), " ".join(rng.choices(WORDS, k=rng.randint(8, 80)))
            sample = {"__key__": f"{task}{i:06d}", "target.png": png(size, rng)}
            if task == "edit":
                sample.update({"task.txt": "edit", "source.png": png(size, rng), "instruction.txt": text})
            else:
                sample["caption.txt"] = text
            writer.write(sample)
    return sorted(str(p) for p in out.glob(f"{task}-*.tar"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--samples", type=int, default=800)
    args = p.parse_args()
    rng = random.Random(0)
    n_edit = round(0.3 * args.samples)
    sources = {task: write(args.out, task, n, rng) for task, n in (("t2i", args.samples - n_edit), ("edit", n_edit))}
    listed = ", ".join(f"{{name: {t}, task: {t}, urls: [{', '.join(urls)}]}}" for t, urls in sources.items())
    print(f"lightbagel-plan recipes/lightbagel_7b_5b.yaml 'data.sources=[{listed}]' 'data.stages=[]' --data-sample 20")


if __name__ == "__main__":
    main()
