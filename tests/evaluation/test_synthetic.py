"""The synthetic eval: fixed prompt sets, exact per-category checks, the table."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from PIL import Image

from lightbagel import shapes
from lightbagel.evaluation.synthetic import CATEGORIES, EDIT, evaluate_synthetic, passed, synthetic_items


def test_items_are_fixed_and_cover_every_category():
    a, b = synthetic_items(3, seed=7), synthetic_items(3, seed=7)
    assert [i.prompt for i in a] == [i.prompt for i in b]
    assert [i.category for i in a].count(EDIT) == 3
    assert {i.category for i in a} == {*CATEGORIES, EDIT}
    counting = [i for i in a if i.category == "counting"]
    assert all(i.prompt.startswith("two ") for i in counting)
    with pytest.raises(ValueError, match="per_category"):
        synthetic_items(0)


def test_ground_truth_passes_and_a_blank_image_fails():
    blank = Image.new("RGB", (32, 32), shapes.BACKGROUND)
    for item in synthetic_items(5, seed=1):
        assert passed(item, shapes.render(item.scene, 32)), item.prompt
        assert not passed(item, blank), item.prompt


def test_a_swapped_colour_fails_attribution_but_not_counting():
    item = next(i for i in synthetic_items(5) if i.category == "color_attr")
    a, b = item.scene.objects
    swapped = shapes.Scene([shapes.ShapeObject(a.shape, b.color, a.x, a.y, a.size),
                            shapes.ShapeObject(b.shape, a.color, b.x, b.y, b.size)])
    image = shapes.render(swapped, 32)
    assert not passed(item, image)
    assert passed(type(item)("two_objects", item.prompt, item.scene), image)  # shapes and count still right


def test_a_wrong_colour_fails_every_colour_check():
    for item in [i for i in synthetic_items(4, seed=2) if i.category in ("colors", "color_attr")]:
        wrong = [shapes.ShapeObject(o.shape, "purple" if o.color != "purple" else "red", o.x, o.y, o.size)
                 for o in item.scene.objects]
        assert passed(item, shapes.render(item.scene, 32)), item.prompt
        assert not passed(item, shapes.render(shapes.Scene(wrong), 32)), item.prompt


@dataclass
class _Out:
    images: list


class _Oracle:
    """Draws exactly what each prompt asks for (or nothing): the scores must be 1 (or 0)."""

    image_size = 32

    def __init__(self, items, blank: bool = False):
        self.scenes = {i.prompt: i.scene for i in items}
        self.blank = blank

    def __call__(self, prompts, images=None, config=None, seed=0):
        if self.blank:
            return _Out([Image.new("RGB", (32, 32), shapes.BACKGROUND) for _ in prompts])
        return _Out([shapes.render(self.scenes[p], 32) for p in prompts])


def test_report_of_a_perfect_and_an_empty_generator():
    items = synthetic_items(2)
    good = evaluate_synthetic(_Oracle(items), per_category=2, batch_size=5, progress=False)
    assert good.overall == 1.0 and good.accuracy[EDIT] == 1.0
    bad = evaluate_synthetic(_Oracle(items, blank=True), per_category=2, progress=False)
    assert bad.overall == 0.0
    table = good.to_markdown()
    assert "| counting | 1.000 | 2 |" in table and "| overall | 1.000 | 12 |" in table
    assert set(good.metrics("val/")) == {f"val/{c}" for c in [*CATEGORIES, EDIT, "overall"]}


class _Recording:
    """The real pipeline, remembering which prompt, source and seed made each image it returned."""

    def __init__(self, pipe):
        self.pipe, self.image_size, self.made = pipe, pipe.image_size, {}

    def __call__(self, prompts, images=None, config=None, seed=0):
        out = self.pipe(prompts, images=images, config=config, seed=seed)
        for prompt, source, s, image in zip(prompts, images, seed, out.images):
            self.made[id(image)] = (prompt, None if source is None else source.tobytes(), s)
        return out


def test_with_the_tiny_model_every_image_is_scored(tiny_pipe, tmp_path):
    """Each item is scored on the image generated for its own prompt (and source), with its own seed,
    and each category's score is the share of its items that pass."""
    from lightbagel.inference import SamplerConfig

    pipe = _Recording(tiny_pipe)
    report = evaluate_synthetic(pipe, per_category=1, config=SamplerConfig(steps=1, shift=1.0), batch_size=3,
                                image_seed=10, progress=False)
    items = synthetic_items(1)
    assert [item.prompt for item, _ in report.images] == [item.prompt for item in items]
    for k, (item, image) in enumerate(report.images):
        source = None if item.source is None else shapes.render(item.source, 32).tobytes()
        assert pipe.made[id(image)] == (item.prompt, source, 10 + k)
    for category, score in report.accuracy.items():
        wins = [passed(item, image) for item, image in report.images if item.category == category]
        assert report.counts[category] == len(wins) == 1 and score == sum(wins) / len(wins)
    report.save_images(tmp_path)
    assert (tmp_path / "edit" / "0000.png").is_file() and (tmp_path / "edit" / "0000.txt").is_file()
