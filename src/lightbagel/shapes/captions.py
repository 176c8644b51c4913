"""Shapes-world captions back to scenes: `lightbagel-data render "a red circle left of a blue
square" scene.png` draws a test input for editing and chat, in the world the tiny model knows."""

from __future__ import annotations

import re

from lightbagel.shapes import COLORS, SHAPES, Scene, ShapeObject

_SINGLE = ShapeObject("circle", "red", 0.5, 0.5, 0.4)  # placement of a lone object
_PAIR_SIZE, _NEAR, _FAR = 0.3, 0.28, 0.72  # two objects: centres a clear gap apart on one axis
# Where the first object goes for each relation to the second: (x, y) of the first, of the second.
_LAYOUT = {
    "left of": ((_NEAR, 0.5), (_FAR, 0.5)),
    "right of": ((_FAR, 0.5), (_NEAR, 0.5)),
    "above": ((0.5, _NEAR), (0.5, _FAR)),
    "below": ((0.5, _FAR), (0.5, _NEAR)),
}
_OBJECT = r"an? (\w+) (\w+)"
_GRAMMAR = ('"a red circle", "two blue squares" or "a red circle left of a blue square" '
            f"(right of, above, below); colors: {', '.join(COLORS)}; shapes: {', '.join(SHAPES)}")


def scene_from_caption(text: str) -> Scene:
    """The scene a caption describes; ValueError naming the grammar when it is not one."""
    text = " ".join(text.lower().split())
    scene = _parse(text)
    if scene is None:
        raise ValueError(f"cannot draw {text!r}: write {_GRAMMAR}")
    return scene


def _parse(text: str) -> Scene | None:
    if m := re.fullmatch(_OBJECT, text):
        return _scene([(m[1], m[2], _SINGLE.x, _SINGLE.y, _SINGLE.size)])
    if m := re.fullmatch(r"two (\w+) (\w+)s", text):
        (x0, y0), (x1, y1) = _LAYOUT["left of"]
        return _scene([(m[1], m[2], x0, y0, _PAIR_SIZE), (m[1], m[2], x1, y1, _PAIR_SIZE)])
    relations = "|".join(_LAYOUT)
    if m := re.fullmatch(f"{_OBJECT} ({relations}) {_OBJECT}", text):
        (x0, y0), (x1, y1) = _LAYOUT[m[3]]
        return _scene([(m[1], m[2], x0, y0, _PAIR_SIZE), (m[4], m[5], x1, y1, _PAIR_SIZE)])
    return None


def _scene(objects: list[tuple[str, str, float, float, float]]) -> Scene | None:
    if any(color not in COLORS or shape not in SHAPES for color, shape, *_ in objects):
        return None
    return Scene([ShapeObject(shape, color, x, y, size) for color, shape, x, y, size in objects])

