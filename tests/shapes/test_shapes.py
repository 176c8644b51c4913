import json
import random
import re

import numpy as np
import pytest
from PIL import Image

from lightbagel import shapes
from lightbagel.shapes import (
    BACKGROUND,
    COLORS,
    Scene,
    ShapeObject,
    caption,
    detect,
    questions,
    render,
    sample_edit,
    sample_scene,
    score,
    vocabulary,
)


def scenes(n: int, seed: int = 0) -> list[Scene]:
    rng = random.Random(seed)
    return [sample_scene(rng) for _ in range(n)]


def pair(a: tuple, b: tuple) -> Scene:
    """Two objects from (shape, color, x, y) tuples, both of size 0.3."""
    return Scene([ShapeObject(s, c, x, y, 0.3) for s, c, x, y in (a, b)])


def test_scene_json_round_trip():
    for scene in scenes(50):
        data = json.loads(json.dumps(scene.to_dict()))
        assert Scene.from_dict(data) == scene


def test_unknown_names_rejected():
    with pytest.raises(ValueError):
        ShapeObject("hexagon", "red", 0.5, 0.5, 0.3)
    with pytest.raises(ValueError):
        ShapeObject("circle", "pink", 0.5, 0.5, 0.3)
    with pytest.raises(ValueError):
        sample_scene(random.Random(0), max_objects=3)


def test_sample_scene_geometry():
    counts = {1: 0, 2: 0}
    for scene in scenes(500):
        counts[len(scene.objects)] += 1
        low, high = shapes.SINGLE_SIZE if len(scene.objects) == 1 else shapes.PAIR_SIZE
        for obj in scene.objects:
            assert low <= obj.size <= high
            x0, y0, x1, y1 = obj.bbox
            assert min(x0, y0) >= shapes.MARGIN - 1e-9 and max(x1, y1) <= 1 - shapes.MARGIN + 1e-9
        if len(scene.objects) == 2:
            a, b = scene.objects
            assert shapes._separated(a, b)
            dx, dy = abs(a.x - b.x), abs(a.y - b.y)
            assert max(dx, dy) >= 2 * min(dx, dy)  # one clear relation
    assert counts[1] > 150 and counts[2] > 150
    assert all(len(s.objects) == 1 for s in (sample_scene(random.Random(i), 1) for i in range(20)))


def test_sampling_is_deterministic():
    assert scenes(20, seed=3) == scenes(20, seed=3)
    assert scenes(20, seed=3) != scenes(20, seed=4)


def test_caption_examples():
    assert caption(Scene([ShapeObject("circle", "red", 0.5, 0.5, 0.4)])) == "a red circle"
    assert caption(Scene([ShapeObject("square", "orange", 0.5, 0.5, 0.4)])) == "an orange square"
    left_right = pair(("circle", "red", 0.25, 0.5), ("square", "blue", 0.75, 0.55))
    assert caption(left_right) == "a red circle left of a blue square"
    assert caption(Scene(left_right.objects[::-1])) == "a blue square right of a red circle"
    above = pair(("triangle", "green", 0.5, 0.2), ("circle", "yellow", 0.45, 0.7))
    assert caption(above) == "a green triangle above a yellow circle"
    assert caption(Scene(above.objects[::-1])) == "a yellow circle below a green triangle"
    twins = pair(("square", "blue", 0.2, 0.5), ("square", "blue", 0.8, 0.5))
    assert caption(twins) == "two blue squares"


def all_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        scene = sample_scene(rng)
        instruction, target = sample_edit(rng, scene)
        asked = questions.ask(rng, scene)  # the questions the shards hold
        texts += [caption(scene), caption(target), instruction, asked.question, asked.answer]
    return texts


def test_vocabulary_covers_every_text_and_nothing_more():
    vocab = vocabulary()
    assert vocab == sorted(set(vocab))
    used = {word for text in all_texts(2000, seed=0) for word in text.split()}
    assert used <= set(vocab), used - set(vocab)
    assert set(vocab) <= used, set(vocab) - used  # no dead words either
    assert all(re.fullmatch(r"[a-z]+", word) for word in vocab)


def resolve(scene: Scene, phrase: str) -> list[int]:
    """Indices of the objects a phrase like "the left red circle" can mean."""
    words = phrase.split()
    assert words[0] == "the"
    shape, modifiers = words[-1], words[1:-1]
    hits = []
    for i, obj in enumerate(scene.objects):
        if obj.shape != shape:
            continue
        ok = True
        for word in modifiers:
            if word in COLORS:
                ok &= obj.color == word
            else:  # a side: the object must be on that side of every other one
                rel = {"left": "left of", "right": "right of", "top": "above", "bottom": "below"}
                others = [o for j, o in enumerate(scene.objects) if j != i]
                ok &= all(shapes.relation(obj, o) == rel[word] for o in others)
        if ok:
            hits.append(i)
    return hits


def changed(source: Scene, target: Scene) -> list[tuple[ShapeObject, ShapeObject]]:
    return [(a, b) for a, b in zip(source.objects, target.objects) if a != b]


def check_edit(source: Scene, instruction: str, target: Scene) -> str:
    if m := re.fullmatch(r"make (the .+) (\w+)", instruction):
        (i,) = resolve(source, m[1])
        assert [(a.color, b.color) for a, b in changed(source, target)] == [
            (source.objects[i].color, m[2])
        ]
        assert target.objects[i].color == m[2] != source.objects[i].color
        return "recolor"
    if m := re.fullmatch(r"turn (the .+) into an? (\w+)", instruction):
        (i,) = resolve(source, m[1])
        assert len(changed(source, target)) == 1
        assert target.objects[i].shape == m[2] != source.objects[i].shape
        return "reshape"
    if m := re.fullmatch(r"remove (the .+)", instruction):
        (i,) = resolve(source, m[1])
        assert target.objects == source.objects[:i] + source.objects[i + 1 :]
        return "remove"
    m = re.fullmatch(r"add an? (\w+) (\w+)", instruction)
    assert m, instruction
    assert target.objects[: len(source.objects)] == source.objects
    (new,) = target.objects[len(source.objects) :]
    assert new.kind == (m[2], m[1]) and shapes._separated(source.objects[0], new)
    return "add"


def test_edits_are_correct_and_unambiguous():
    rng = random.Random(1)
    kinds = set()
    for _ in range(600):
        source = sample_scene(rng)
        before = source.to_dict()
        instruction, target = sample_edit(rng, source)
        assert source.to_dict() == before  # the source scene is not mutated
        kinds.add(check_edit(source, instruction, target))
        caption(target)  # still captionable
    assert kinds == {"recolor", "reshape", "remove", "add"}


def test_twins_are_referred_to_by_position():
    twins = pair(("circle", "red", 0.5, 0.2), ("circle", "red", 0.5, 0.75))
    assert shapes.refer(twins, 0) == "the top circle"
    assert shapes.refer(twins, 1) == "the bottom circle"


def test_render_draws_objects_on_background():
    scene = pair(("square", "blue", 0.25, 0.5), ("circle", "yellow", 0.75, 0.5))
    image = render(scene, 64)
    assert image.mode == "RGB" and image.size == (64, 64)
    assert image.getpixel((1, 1)) == BACKGROUND
    assert image.getpixel((16, 32)) == COLORS["blue"]
    assert image.getpixel((48, 32)) == COLORS["yellow"]
    assert render(scene, 32).size == (32, 32)


def test_detect_recovers_rendered_scene():
    for scene in scenes(100, seed=5):
        found = detect(render(scene, 64))
        assert sorted(o.kind for o in found) == sorted(o.kind for o in scene.objects)
        for obj in scene.objects:
            best = min(found, key=lambda o: abs(o.x - obj.x) + abs(o.y - obj.y))
            assert best.kind == obj.kind
            assert abs(best.x - obj.x) < 2 / 64 and abs(best.y - obj.y) < 2 / 64
            assert abs(best.size - obj.size) < 3 / 64


def test_detect_accepts_arrays_and_ignores_specks():
    scene = Scene([ShapeObject("triangle", "purple", 0.4, 0.5, 0.4)])
    array = np.array(render(scene, 64))
    array[2:4, 60:62] = COLORS["red"]  # a 4-pixel speck is noise, not an object
    (found,) = detect(array)
    assert found.kind == ("triangle", "purple")
    assert detect(Image.new("RGB", (32, 32), BACKGROUND)) == []
    with pytest.raises(ValueError):
        detect(array.astype(np.float32))


def test_score_is_perfect_on_own_renders():
    for scene in scenes(200, seed=6):
        result = score(render(scene, 64), scene)
        assert all(result.values()), (scene, result)
    small = [score(render(s, 32), s)["overall"] for s in scenes(200, seed=7)]
    assert np.mean(small) >= 0.95


def test_score_catches_wrong_images():
    scene = pair(("circle", "red", 0.25, 0.5), ("square", "blue", 0.75, 0.5))
    recolored = Scene([scene.objects[0], ShapeObject("square", "green", 0.75, 0.5, 0.3)])
    result = score(render(recolored, 64), scene)
    assert not result["colors"] and not result["attribution"] and not result["overall"]
    assert result["count"] and result["shapes"]

    reshaped = Scene([ShapeObject("triangle", "red", 0.25, 0.5, 0.3), scene.objects[1]])
    result = score(render(reshaped, 64), scene)
    assert not result["shapes"] and result["colors"] and not result["overall"]

    swapped = pair(("circle", "red", 0.75, 0.5), ("square", "blue", 0.25, 0.5))
    result = score(render(swapped, 64), scene)
    assert not result["position"] and result["attribution"] and not result["overall"]

    swapped_attrs = pair(("circle", "blue", 0.25, 0.5), ("square", "red", 0.75, 0.5))
    result = score(render(swapped_attrs, 64), scene)
    assert result["colors"] and result["shapes"] and not result["attribution"]

    result = score(Image.new("RGB", (64, 64), BACKGROUND), scene)
    assert not any(result.values())


def test_an_extra_object_fails_the_count():
    """GenEval counts exactly: two red circles asked, three drawn, is a miss."""
    two = pair(("circle", "red", 0.25, 0.3), ("circle", "red", 0.75, 0.3))
    three = Scene([*two.objects, ShapeObject("circle", "red", 0.5, 0.75, 0.3)])
    assert score(render(two, 64), two)["count"]
    assert not score(render(three, 64), two)["count"]


def test_clean_objects_passes_renders_and_fails_fragments_noise_and_smears():
    rng = random.Random(11)
    scenes = [shapes.sample_scene(rng) for _ in range(200)]
    assert sum(shapes.clean_objects(shapes.render(s, 32)) for s in scenes) >= 0.98 * len(scenes)
    one = shapes.Scene([shapes.ShapeObject("square", "red", 0.5, 0.5, 0.4)])
    rgb = np.asarray(shapes.render(one, 32)).copy()
    assert shapes.clean_objects(rgb)
    assert not shapes.clean_objects(np.full_like(rgb, shapes.BACKGROUND))  # no object
    split = rgb.copy()
    split[:, 15:17] = shapes.BACKGROUND  # one square cut into two halves of one colour
    assert not shapes.clean_objects(split)
    smear = rgb.copy()
    smear[12:20, 4:28] = shapes.COLORS["red"]  # a box twice as wide as high
    assert not shapes.clean_objects(smear)
    speckle = rgb.copy()
    speckle[1::6, 1::6] = shapes.COLORS["blue"]  # single off-object pixels
    assert not shapes.clean_objects(speckle)
    off = rgb.copy()
    off[0:4, 0:4] = (0, 255, 255)  # a colour off the palette
    assert not shapes.clean_objects(off)
