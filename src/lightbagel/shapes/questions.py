"""Questions about a shapes-world scene with exact answers: the understanding (`und`) samples.

Each kind probes one thing a VLM must read from the image: how many objects, an object's colour,
its shape, where it is relative to the other object, and the whole scene as a caption. Answers
are single words except captions, so scoring is exact string equality.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from lightbagel import shapes
from lightbagel.shapes import COLORS, NUMBER_WORDS, SHAPES, Scene

KINDS = ("count", "color", "shape", "position", "exists", "caption")
CAPTION_QUESTION = "what is there"
_OTHER_SIDE = {"left of": ("right of", "above", "below"), "right of": ("left of", "above", "below"),
               "above": ("below", "left of", "right of"), "below": ("above", "left of", "right of")}


@dataclass(frozen=True)
class Question:
    kind: str
    question: str
    answer: str


def _count(rng: random.Random, scene: Scene) -> Question:
    return Question("count", "how many objects are there", NUMBER_WORDS[len(scene.objects)])


def _color(rng: random.Random, scene: Scene) -> Question:
    i = rng.randrange(len(scene.objects))
    return Question("color", f"what color is {shapes.refer(scene, i)}", scene.objects[i].color)


def _shape(rng: random.Random, scene: Scene) -> Question:
    objs = scene.objects
    if len(objs) == 1:
        return Question("shape", "what shape is there", objs[0].shape)
    i = rng.randrange(2)
    side = shapes.SIDE_WORDS[shapes.relation(objs[i], objs[1 - i])]
    where = f"on the {side}" if side in ("left", "right") else f"at the {side}"
    return Question("shape", f"what shape is {where}", objs[i].shape)


def _position(rng: random.Random, scene: Scene) -> Question:
    """ "is the red circle left of the square": true half of the time (two-object scenes only)."""
    i = rng.randrange(2)
    a, b = scene.objects[i], scene.objects[1 - i]
    truth = shapes.relation(a, b)
    said = truth if rng.random() < 0.5 else rng.choice(_OTHER_SIDE[truth])
    question = f"is {shapes.refer(scene, i)} {said} {shapes.refer(scene, 1 - i)}"
    return Question("position", question, "yes" if said == truth else "no")


def _exists(rng: random.Random, scene: Scene) -> Question:
    if rng.random() < 0.5:
        shape, color = rng.choice(scene.objects).kind
    else:
        shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    answer = "yes" if any(o.kind == (shape, color) for o in scene.objects) else "no"
    return Question("exists", f"is there {'an' if color[0] in 'aeiou' else 'a'} {color} {shape}", answer)


def _caption(rng: random.Random, scene: Scene) -> Question:
    return Question("caption", CAPTION_QUESTION, shapes.caption(scene))


_ASK = {"count": _count, "color": _color, "shape": _shape, "position": _position, "exists": _exists,
        "caption": _caption}


def kinds_for(scene: Scene) -> tuple[str, ...]:
    # "position" needs two objects of different kinds: twins have no unambiguous names to compare.
    objs = scene.objects
    pair = len(objs) == 2 and objs[0].kind != objs[1].kind
    return KINDS if pair else tuple(k for k in KINDS if k != "position")


def ask(rng: random.Random, scene: Scene, kind: str | None = None) -> Question:
    """One question of `kind` (default: a random kind that fits the scene)."""
    kind = kind or rng.choice(kinds_for(scene))
    if kind not in kinds_for(scene):
        raise ValueError(f"question kind {kind!r} does not fit this scene; allowed: {', '.join(kinds_for(scene))}")
    return _ASK[kind](rng, scene)


def conversation(rng: random.Random, scene: Scene, turns: int = 3) -> list[dict]:
    """A chat about one image in docs/data.md's `conversation.json` form; the image comes first."""
    messages = []
    for turn in range(turns):
        qa = ask(rng, scene)
        image = "<image>" if turn == 0 else ""
        messages += [{"role": "user", "content": image + qa.question},
                     {"role": "assistant", "content": qa.answer}]
    return messages
