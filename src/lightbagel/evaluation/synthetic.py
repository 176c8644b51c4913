"""The shapes world scored exactly: a GenEval-style table plus edit success.

Every prompt comes from a known scene, so `shapes.score` checks the generated image against it
exactly (detected count, colours, shapes, relation). Each GenEval-like category reads the checks
that define it; "overall" is the mean over the T2I categories, as GenEval reports it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

from PIL import Image

from lightbagel import shapes
from lightbagel.progress import track
from lightbagel.shapes import Scene

# Category -> (scene maker, the checks of shapes.score that must all hold).
SceneMaker = Callable[[random.Random], Scene]


def _one(rng: random.Random) -> Scene:
    return shapes.sample_scene(rng, max_objects=1)


def _two(rng: random.Random) -> Scene:
    while True:
        scene = shapes.sample_scene(rng)
        objs = scene.objects
        if len(objs) == 2 and objs[0].shape != objs[1].shape and objs[0].color != objs[1].color:
            return scene


def _same_pair(rng: random.Random) -> Scene:
    """ "two red circles": a two-object scene with the second object made like the first."""
    first, second = _two(rng).objects
    return Scene([first, replace(second, shape=first.shape, color=first.color)])


CATEGORIES: dict[str, tuple[SceneMaker, tuple[str, ...]]] = {
    "single_object": (_one, ("count", "shapes")),
    "two_objects": (_two, ("count", "shapes")),
    "counting": (_same_pair, ("count",)),
    "colors": (_one, ("count", "colors")),
    "position": (_two, ("attribution", "position")),
    "color_attr": (_two, ("attribution",)),
}
EDIT = "edit"


@dataclass
class EvalItem:
    category: str
    prompt: str
    scene: Scene  # what the image must show
    source: Optional[Scene] = None  # editing: the scene before the edit


def synthetic_items(per_category: int, seed: int = 0) -> list[EvalItem]:
    """A fixed prompt set: `per_category` per T2I category plus as many edits."""
    if per_category < 1:
        raise ValueError(f"per_category must be >= 1, got {per_category}")
    rng, items = random.Random(seed), []
    for name, (make, _) in CATEGORIES.items():
        for _ in range(per_category):
            scene = make(rng)
            items.append(EvalItem(name, shapes.caption(scene), scene))
    for _ in range(per_category):
        before = shapes.sample_scene(rng)
        instruction, after = shapes.sample_edit(rng, before)
        items.append(EvalItem(EDIT, instruction, after, before))
    return items


def passed(item: EvalItem, image: Image.Image) -> bool:
    checks = shapes.score(image, item.scene)
    keys = ("overall",) if item.category == EDIT else CATEGORIES[item.category][1]
    return all(checks[k] for k in keys)


@dataclass
class SyntheticReport:
    accuracy: dict[str, float]  # category (and "edit") -> fraction passed
    counts: dict[str, int]
    images: list[tuple[EvalItem, Image.Image]] = field(default_factory=list, repr=False)

    @property
    def overall(self) -> float:
        return sum(self.accuracy[c] for c in CATEGORIES) / len(CATEGORIES)

    def metrics(self, prefix: str = "eval/") -> dict[str, float]:
        return {**{f"{prefix}{k}": v for k, v in self.accuracy.items()}, f"{prefix}overall": self.overall}

    def to_markdown(self) -> str:
        rows = [*CATEGORIES, "overall", EDIT]
        value = {**self.accuracy, "overall": self.overall}
        n = {**self.counts, "overall": sum(self.counts[c] for c in CATEGORIES)}
        lines = ["| task | score | n |", "|---|---:|---:|"]
        lines += [f"| {r} | {value[r]:.3f} | {n[r]} |" for r in rows]
        return "\n".join(lines)

    def save_images(self, out_dir: Path) -> None:
        """`<category>/<index>.png` plus the prompt in `<category>/<index>.txt`."""
        seen: dict[str, int] = {}
        for item, image in self.images:
            i = seen[item.category] = seen.get(item.category, -1) + 1
            folder = out_dir / item.category
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{i:04d}.png")
            (folder / f"{i:04d}.txt").write_text(item.prompt + "\n")


    def save_grids(self, out_dir: Path, per_grid: int = 8) -> list[Path]:
        """One captioned grid per category (`<category>.png`): the generated row above the
        reference (and the source row first for edits), the prompt under each column."""
        from lightbagel.evaluation.grid import captioned_grid

        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for category in dict.fromkeys(item.category for item, _ in self.images):
            shown = [(it, im) for it, im in self.images if it.category == category][:per_grid]
            side = shown[0][1].width
            rows = [[im for _, im in shown], [shapes.render(it.scene, side) for it, _ in shown]]
            if category == EDIT:
                rows.insert(0, [shapes.render(it.source, side) for it, _ in shown])
            paths.append(out_dir / f"{category}.png")
            captioned_grid(rows, [it.prompt for it, _ in shown]).save(paths[-1])
        return paths


def evaluate_synthetic(pipe, per_category: int = 16, seed: int = 0, config=None, batch_size: int = 32,
                       image_seed: int = 0, progress: bool = True) -> SyntheticReport:
    """Generates every item with `pipe` (a LightBagelPipeline) and scores it exactly."""
    items = synthetic_items(per_category, seed)
    size = pipe.image_size
    results: list[tuple[EvalItem, Image.Image]] = []
    starts = range(0, len(items), batch_size)
    for start in track(starts, len(starts), "synthetic eval batch", enabled=progress):
        chunk = items[start:start + batch_size]
        sources = [shapes.render(it.source, size) if it.source is not None else None for it in chunk]
        out = pipe([it.prompt for it in chunk], images=sources, config=config,
                   seed=[image_seed + start + i for i in range(len(chunk))])
        results += list(zip(chunk, out.images))
    wins: dict[str, list[bool]] = {}
    for item, image in results:
        wins.setdefault(item.category, []).append(passed(item, image))
    return SyntheticReport({k: sum(v) / len(v) for k, v in wins.items()}, {k: len(v) for k, v in wins.items()},
                           results)
