"""The synthetic "shapes world": scenes of coloured shapes on a grey background.

It is small enough to train a unified text-to-image / image-editing model on a
CPU, and every image can be checked exactly: :func:`detect` recovers the objects
of a rendered scene and :func:`score` runs GenEval-style checks against the
scene a prompt asked for. Scenes hold one or two objects; coordinates are
fractions of the image side with the origin at the top-left corner.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

# Far apart in RGB and from the background, so that a detector can tell them
# apart even on anti-aliased edges and on imperfect generated images.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (210, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 210),
    "yellow": (240, 210, 0),
    "purple": (140, 50, 180),
    "orange": (245, 125, 0),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUND: tuple[int, int, int] = (230, 230, 230)
MAX_OBJECTS = 2
NUMBER_WORDS = ("zero", "one", "two")  # indexed by object count

MARGIN = 0.04  # empty border between any object and the image edge
GAP = 0.08  # empty space between two objects along their separating axis
SINGLE_SIZE = (0.30, 0.45)
PAIR_SIZE = (0.25, 0.35)
SUPERSAMPLE = 4
MIN_BLOB_FRACTION = 0.02  # blobs below this share of the image are noise
MAX_RESIDUAL = 60.0  # RGB distance beyond which a pixel matches no palette colour

SIDE_WORDS = {"left of": "left", "right of": "right", "above": "top", "below": "bottom"}
_TEMPLATE_WORDS = (
    "a an two left right of above below top bottom the make remove add turn into "
    "what color is shape how many objects are there on at yes no"
).split()


@dataclass(frozen=True)
class ShapeObject:
    """One object; ``x``, ``y`` (bounding-box centre) and ``size`` are fractions of the side."""

    shape: str
    color: str
    x: float
    y: float
    size: float

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        if self.color not in COLORS:
            raise ValueError(f"unknown color {self.color!r}")

    @property
    def kind(self) -> tuple[str, str]:
        return (self.shape, self.color)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        half = self.size / 2
        return (self.x - half, self.y - half, self.x + half, self.y + half)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ShapeObject":
        values = (float(data[k]) for k in ("x", "y", "size"))
        return cls(str(data["shape"]), str(data["color"]), *values)


@dataclass
class Scene:
    objects: list[ShapeObject] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"objects": [obj.to_dict() for obj in self.objects]}

    @classmethod
    def from_dict(cls, data: dict) -> "Scene":
        return cls([ShapeObject.from_dict(obj) for obj in data["objects"]])


def relation(a: ShapeObject, b: ShapeObject) -> str:
    """Where ``a`` is relative to ``b``, along whichever axis separates them more."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _separated(a: ShapeObject, b: ShapeObject) -> bool:
    ax0, ay0, ax1, ay1 = a.bbox
    bx0, by0, bx1, by1 = b.bbox
    gap_x = max(bx0 - ax1, ax0 - bx1)
    gap_y = max(by0 - ay1, ay0 - by1)
    return max(gap_x, gap_y) >= GAP


def _clear_relation(a: ShapeObject, b: ShapeObject) -> bool:
    # The caption names one relation, so the other axis must not compete with it.
    dx, dy = abs(a.x - b.x), abs(a.y - b.y)
    return max(dx, dy) >= 2 * min(dx, dy)


def _random_object(rng: random.Random, size_range: tuple[float, float]) -> ShapeObject:
    size = rng.uniform(*size_range)
    low = MARGIN + size / 2
    x, y = rng.uniform(low, 1 - low), rng.uniform(low, 1 - low)
    return ShapeObject(rng.choice(SHAPES), rng.choice(list(COLORS)), x, y, size)


def _place_next_to(rng: random.Random, first: ShapeObject, tries: int = 100) -> ShapeObject | None:
    for _ in range(tries):
        candidate = _random_object(rng, PAIR_SIZE)
        if _separated(first, candidate) and _clear_relation(first, candidate):
            return candidate
    return None


def sample_scene(rng: random.Random, max_objects: int = MAX_OBJECTS) -> Scene:
    """A random scene of 1..``max_objects`` (at most 2) non-overlapping objects."""
    if not 1 <= max_objects <= MAX_OBJECTS:
        raise ValueError(f"max_objects must be in [1, {MAX_OBJECTS}], got {max_objects}")
    if rng.randint(1, max_objects) == 1:
        return Scene([_random_object(rng, SINGLE_SIZE)])
    while True:  # a large central first object can leave no room; draw again
        first = _random_object(rng, PAIR_SIZE)
        second = _place_next_to(rng, first, tries=20)
        if second is not None:
            return Scene([first, second])


def _draw(draw: ImageDraw.ImageDraw, obj: ShapeObject, side: int) -> None:
    x0, y0, x1, y1 = (v * side for v in obj.bbox)
    fill = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif obj.shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    else:  # upright isosceles triangle filling half of its bounding box
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)


def render(scene: Scene, image_size: int) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``image_size`` x ``image_size`` pixels."""
    side = image_size * SUPERSAMPLE
    image = Image.new("RGB", (side, side), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw(draw, obj, side)
    # BOX averaging gives anti-aliased edges that are exact colour/background
    # blends (no LANCZOS ringing), which keeps detect() simple and exact.
    return image.resize((image_size, image_size), Image.Resampling.BOX)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase(obj: ShapeObject) -> str:
    return f"{_article(obj.color)} {obj.color} {obj.shape}"


def caption(scene: Scene) -> str:
    """The lowercase caption, e.g. ``"a red circle left of a blue square"``."""
    objs = scene.objects
    if len(objs) == 1:
        return _phrase(objs[0])
    if len(objs) != 2:
        raise ValueError(f"captions cover 1 or 2 objects, got {len(objs)}")
    a, b = objs
    if a.kind == b.kind:
        return f"two {a.color} {a.shape}s"
    return f"{_phrase(a)} {relation(a, b)} {_phrase(b)}"


def refer(scene: Scene, index: int) -> str:
    """The shortest unambiguous noun phrase for one object of the scene."""
    obj = scene.objects[index]
    others = [o for i, o in enumerate(scene.objects) if i != index]
    if all(o.shape != obj.shape for o in others):
        return f"the {obj.shape}"
    if all(o.kind != obj.kind for o in others):
        return f"the {obj.color} {obj.shape}"
    if len(others) != 1:
        raise ValueError("cannot refer to one of several identical objects")
    return f"the {SIDE_WORDS[relation(obj, others[0])]} {obj.shape}"


def _edit_recolor(rng: random.Random, scene: Scene) -> tuple[str, Scene]:
    i, color = _change_one(rng, scene, "color", list(COLORS))
    return f"make {refer(scene, i)} {color}", _with(scene, i, color=color)


def _edit_reshape(rng: random.Random, scene: Scene) -> tuple[str, Scene]:
    i, shape = _change_one(rng, scene, "shape", list(SHAPES))
    return f"turn {refer(scene, i)} into {_article(shape)} {shape}", _with(scene, i, shape=shape)


def _change_one(rng: random.Random, scene: Scene, attr: str, values: list[str]) -> tuple[int, str]:
    i = rng.randrange(len(scene.objects))
    return i, rng.choice([v for v in values if v != getattr(scene.objects[i], attr)])


def _with(scene: Scene, index: int, **changes: str) -> Scene:
    objects = list(scene.objects)
    objects[index] = replace(objects[index], **changes)
    return Scene(objects)


def _edit_remove(rng: random.Random, scene: Scene) -> tuple[str, Scene]:
    i = rng.randrange(len(scene.objects))
    objects = [o for j, o in enumerate(scene.objects) if j != i]
    return f"remove {refer(scene, i)}", Scene(objects)


def _edit_add(rng: random.Random, scene: Scene) -> tuple[str, Scene] | None:
    new = _place_next_to(rng, scene.objects[0])
    if new is None:
        return None
    return f"add {_phrase(new)}", Scene([scene.objects[0], new])


_EDITS: dict[str, Callable[[random.Random, Scene], tuple[str, Scene]]] = {
    "recolor": _edit_recolor,
    "reshape": _edit_reshape,
    "remove": _edit_remove,
}


def sample_edit(rng: random.Random, scene: Scene) -> tuple[str, Scene]:
    """An instruction and the scene it produces: recolour, reshape, remove or add."""
    if not 1 <= len(scene.objects) <= MAX_OBJECTS:
        raise ValueError(f"edits need 1..{MAX_OBJECTS} objects, got {len(scene.objects)}")
    kinds = ["recolor", "reshape", "remove" if len(scene.objects) > 1 else "add"]
    kind = rng.choice(kinds)
    if kind == "add":
        added = _edit_add(rng, scene)
        if added is not None:
            return added
        kind = rng.choice(kinds[:2])  # a big object can leave no free space
    return _EDITS[kind](rng, scene)


def vocabulary() -> list[str]:
    """Every word a caption, instruction, question or answer can contain."""
    words = set(_TEMPLATE_WORDS) | set(COLORS) | set(SHAPES)
    words |= {f"{shape}s" for shape in SHAPES}
    words |= set(NUMBER_WORDS[1 : MAX_OBJECTS + 1])
    return sorted(words)


def _as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected uint8 HxWx3, got {array.dtype} {array.shape}")
    return array


def _label_pixels(rgb: np.ndarray) -> np.ndarray:
    """Palette index per pixel, -1 for background or unmatched pixels.

    Each pixel is projected onto the segments background->colour: anti-aliased
    edges lie on those segments, so a pixel is given to a colour when it is
    close to its segment and at least half way from the background.
    """
    best, alpha, residual = _palette_fit(rgb)
    keep = (alpha >= 0.5) & (residual <= MAX_RESIDUAL)
    return np.where(keep, best, -1).reshape(rgb.shape[:2])


def _palette_fit(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel (flattened): the nearest background->colour segment, how far along it, and how far off it."""
    bg = np.asarray(BACKGROUND, dtype=np.float64)
    pixels = rgb.reshape(-1, 3).astype(np.float64) - bg
    dirs = np.asarray(list(COLORS.values()), dtype=np.float64) - bg
    alpha = np.clip(pixels @ dirs.T / (dirs * dirs).sum(axis=1), 0.0, 1.0)
    residual = np.linalg.norm(pixels[:, None, :] - alpha[..., None] * dirs[None], axis=2)
    best = residual.argmin(axis=1)
    rows = np.arange(len(pixels))
    return best, alpha[rows, best], residual[rows, best]


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean mask, each as an (N, 2) array of (row, col)."""
    height, width = mask.shape
    todo = mask.tolist()  # plain lists: much faster than numpy scalar indexing here
    blobs = []
    for r0, c0 in zip(*np.nonzero(mask)):
        if not todo[r0][c0]:
            continue
        todo[r0][c0] = False
        stack, pixels = [(int(r0), int(c0))], []
        while stack:
            r, c = stack.pop()
            pixels.append((r, c))
            for rr in range(max(r - 1, 0), min(r + 2, height)):
                for cc in range(max(c - 1, 0), min(c + 2, width)):
                    if todo[rr][cc]:
                        todo[rr][cc] = False
                        stack.append((rr, cc))
        blobs.append(np.asarray(pixels))
    return blobs


def _classify(fill_ratio: float, centroid_y: float) -> str:
    # An upright triangle has its mass centre 2/3 down its box (circle and square:
    # 1/2), which separates it better than its fill ratio on tiny images.
    if centroid_y > 0.58:
        return "triangle"
    # Share of the bounding box covered: square 1.0, circle pi/4.
    return "square" if fill_ratio > 0.925 else "circle"


def _blob_to_object(pixels: np.ndarray, color: str, height: int, width: int) -> ShapeObject:
    (r0, c0), (r1, c1) = pixels.min(axis=0), pixels.max(axis=0) + 1
    fill = len(pixels) / ((r1 - r0) * (c1 - c0))
    centroid_y = ((pixels[:, 0] + 0.5).mean() - r0) / (r1 - r0)
    return ShapeObject(
        shape=_classify(fill, centroid_y),
        color=color,
        x=float(c0 + c1) / 2 / width,
        y=float(r0 + r1) / 2 / height,
        size=float(max((r1 - r0) / height, (c1 - c0) / width)),
    )


def detect(image: Image.Image | np.ndarray) -> list[ShapeObject]:
    """Objects found in an image of the shapes world, sorted left to right."""
    rgb = _as_rgb_array(image)
    height, width = rgb.shape[:2]
    labels = _label_pixels(rgb)
    min_area = MIN_BLOB_FRACTION * height * width
    found = []
    for index, color in enumerate(COLORS):
        for blob in _components(labels == index):
            if len(blob) >= min_area:
                found.append(_blob_to_object(blob, color, height, width))
    return sorted(found, key=lambda o: (o.x, o.y))


# What a clean shape covers of its bounding box (fill ratio), on anti-aliased 32-pixel renders: an
# upright triangle about 1/2, a circle pi/4, a square 1 (data/shapes.py renders all three).
CLEAN_FILL = {"triangle": (0.38, 0.70), "circle": (0.58, 0.925), "square": (0.925, 1.0)}
CLEAN_ASPECT = 0.2  # |height - width| of a clean shape's box over its side
STRAY_FRACTION = 0.01  # fragment or off-palette pixels, as a share of the image


def clean_objects(image: Image.Image | np.ndarray) -> bool:
    """Whether every object of an image is one clean shape of one colour: 1 to MAX_OBJECTS blobs,
    each with a square box and the fill of the shape it is classified as, and next to no stray
    pixels (fragments below the blob size, or colours off the palette). The DiT tower's check on
    unconditional samples (benchmarks/tower_quality.py), which have no prompt to score against."""
    rgb = _as_rgb_array(image)
    height, width = rgb.shape[:2]
    labels = _label_pixels(rgb)
    min_area = MIN_BLOB_FRACTION * height * width
    blobs = [b for index in range(len(COLORS)) for b in _components(labels == index)]
    objects = [b for b in blobs if len(b) >= min_area]
    off_palette = int((_palette_fit(rgb)[2] > MAX_RESIDUAL).sum())
    stray = sum(len(b) for b in blobs if len(b) < min_area) + off_palette
    if not 1 <= len(objects) <= MAX_OBJECTS or stray > STRAY_FRACTION * height * width:
        return False
    return all(_clean_blob(b) for b in objects)


def _clean_blob(pixels: np.ndarray) -> bool:
    (r0, c0), (r1, c1) = pixels.min(axis=0), pixels.max(axis=0) + 1
    h, w = r1 - r0, c1 - c0
    fill = len(pixels) / (h * w)
    shape = _classify(fill, ((pixels[:, 0] + 0.5).mean() - r0) / h)
    low, high = CLEAN_FILL[shape]
    return abs(h - w) <= CLEAN_ASPECT * max(h, w) and low <= fill <= high


def _position_holds(found: list[ShapeObject], wanted: list[ShapeObject]) -> bool:
    if len(wanted) != 2 or wanted[0].kind == wanted[1].kind:
        return True  # the caption states no relation
    a, b = wanted
    target = relation(a, b)
    firsts = [o for o in found if o.kind == a.kind]
    seconds = [o for o in found if o.kind == b.kind]
    return any(relation(da, db) == target for da in firsts for db in seconds)


def score(image: Image.Image | np.ndarray, scene: Scene) -> dict[str, bool]:
    """GenEval-style checks of ``image`` against the intended ``scene``."""
    found, wanted = detect(image), scene.objects
    result = {
        "count": len(found) == len(wanted),
        "colors": Counter(o.color for o in found) == Counter(o.color for o in wanted),
        "shapes": Counter(o.shape for o in found) == Counter(o.shape for o in wanted),
        "position": _position_holds(found, wanted),
        "attribution": not Counter(o.kind for o in wanted) - Counter(o.kind for o in found),
    }
    result["overall"] = all(result.values())
    return result
