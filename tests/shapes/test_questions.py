"""Shapes-world questions: every kind's answer checked against the scene by an independent reading."""

from __future__ import annotations

import random
import re

import pytest

from lightbagel import shapes
from lightbagel.shapes import questions


def _index(scene: shapes.Scene, phrase: str) -> int:
    (i,) = [i for i in range(len(scene.objects)) if shapes.refer(scene, i) == phrase]
    return i


def _expected(scene: shapes.Scene, q: questions.Question) -> str:
    objs = scene.objects
    if q.kind == "count":
        return shapes.NUMBER_WORDS[len(objs)]
    if q.kind == "color":
        return objs[_index(scene, q.question.removeprefix("what color is "))].color
    if q.kind == "shape" and len(objs) == 1:
        return objs[0].shape
    if q.kind == "shape":
        side = re.fullmatch(r"what shape is (?:on|at) the (\w+)", q.question)[1]
        (obj,) = [o for o in objs if shapes.SIDE_WORDS[shapes.relation(o, next(p for p in objs if p is not o))] == side]
        return obj.shape
    if q.kind == "position":
        m = re.fullmatch(r"is (the .+?) (left of|right of|above|below) (the .+)", q.question)
        a, b = objs[_index(scene, m[1])], objs[_index(scene, m[3])]
        return "yes" if shapes.relation(a, b) == m[2] else "no"
    if q.kind == "exists":
        color, shape = q.question.split()[-2:]
        return "yes" if (shape, color) in [o.kind for o in objs] else "no"
    return shapes.caption(scene)


def test_every_kind_answers_right():
    rng, seen = random.Random(3), set()
    for _ in range(300):
        scene = shapes.sample_scene(rng)
        for kind in questions.kinds_for(scene):
            q = questions.ask(rng, scene, kind)
            assert q.answer == _expected(scene, q), q
            seen.add((kind, q.answer))
    assert {("position", "yes"), ("position", "no"), ("exists", "yes"), ("exists", "no")} <= seen


def test_conversations_and_bad_kinds():
    rng = random.Random(0)
    scene = shapes.Scene([shapes.ShapeObject("circle", "red", 0.5, 0.5, 0.4)])
    chat = questions.conversation(rng, scene, turns=4)
    assert [t["role"] for t in chat] == ["user", "assistant"] * 4
    assert chat[0]["content"].startswith("<image>") and "<image>" not in chat[2]["content"]
    with pytest.raises(ValueError, match="position"):
        questions.ask(rng, scene, "position")  # one object: nothing to compare
