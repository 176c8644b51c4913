"""The exact understanding score: held-out shapes-world questions, answered word for word."""

from __future__ import annotations

import pytest

from lightbagel import shapes
from lightbagel.evaluation.vqa import evaluate_vqa, vqa_items
from lightbagel.shapes import questions


class _Answerer:
    """Answers from a table keyed by (question, rendered image): right, or always `fixed`."""

    image_size = 32

    def __init__(self, items, fixed: str | None = None, then: str = ""):
        self.table = {(it.question.question, shapes.render(it.scene, 32).tobytes()): it.question.answer for it in items}
        self.fixed, self.then = fixed, then

    def understand(self, question, images, max_new_tokens=16):
        right = self.table[(question, images[0].tobytes())] + self.then
        return self.fixed if self.fixed is not None else right


def test_items_are_fixed_and_cover_every_kind():
    items = vqa_items(3, seed=5)
    assert [it.question for it in items] == [it.question for it in vqa_items(3, seed=5)]
    assert [it.question.kind for it in items] == [k for k in questions.KINDS for _ in range(3)]
    with pytest.raises(ValueError, match="per_kind"):
        vqa_items(0)


def test_right_answers_score_one_and_a_fixed_answer_scores_its_share():
    items = vqa_items(4, seed=0)
    right = evaluate_vqa(_Answerer(items), per_kind=4, progress=False)
    assert right.overall == 1.0 and set(right.accuracy) == set(questions.KINDS)
    always_two = evaluate_vqa(_Answerer(items, fixed="two"), per_kind=4, progress=False)
    share = sum(it.question.answer == "two" for it in items if it.question.kind == "count") / 4
    assert always_two.accuracy["count"] == share and always_two.accuracy["color"] == 0.0
    assert "| overall | 1.000 | 24 |" in right.to_markdown()


def test_a_right_answer_with_more_words_scores_zero():
    """Exact match, not containment: "red circle" is not the answer "red"."""
    items = vqa_items(2, seed=0)
    wordy = evaluate_vqa(_Answerer(items, then=" circle"), per_kind=2, progress=False)
    assert wordy.overall == 0.0
