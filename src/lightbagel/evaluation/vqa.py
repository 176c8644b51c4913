"""Understanding scored exactly: questions about held-out shapes-world scenes (shapes/questions.py).

An answer counts when the VLM's greedy reply equals the reference answer word for word (for
captions, the whole caption). Scenes come from their own random stream, never from the shards'.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from lightbagel import shapes
from lightbagel.progress import track
from lightbagel.shapes import questions
from lightbagel.shapes.questions import Question


@dataclass
class VQAItem:
    scene: shapes.Scene
    question: Question


@dataclass
class VQAReport:
    accuracy: dict[str, float]  # question kind -> fraction answered exactly
    counts: dict[str, int]
    answers: list[tuple[VQAItem, str]] = field(default_factory=list, repr=False)

    @property
    def overall(self) -> float:
        """The mean over kinds, so each kind weighs the same (as GenEval's overall)."""
        return sum(self.accuracy.values()) / len(self.accuracy)

    def metrics(self, prefix: str = "vqa/") -> dict[str, float]:
        return {**{f"{prefix}{k}": v for k, v in self.accuracy.items()}, f"{prefix}overall": self.overall}

    def to_markdown(self) -> str:
        lines = ["| question | accuracy | n |", "|---|---:|---:|"]
        lines += [f"| {k} | {self.accuracy[k]:.3f} | {self.counts[k]} |" for k in self.accuracy]
        lines.append(f"| overall | {self.overall:.3f} | {sum(self.counts.values())} |")
        return "\n".join(lines)


def vqa_items(per_kind: int, seed: int = 0) -> list[VQAItem]:
    """`per_kind` questions of every kind, each about its own fresh scene."""
    if per_kind < 1:
        raise ValueError(f"per_kind must be >= 1, got {per_kind}")
    rng, items = random.Random(f"vqa:{seed}"), []
    for kind in questions.KINDS:
        while sum(it.question.kind == kind for it in items) < per_kind:
            scene = shapes.sample_scene(rng)
            if kind in questions.kinds_for(scene):
                items.append(VQAItem(scene, questions.ask(rng, scene, kind)))
    return items


def evaluate_vqa(pipe, per_kind: int = 32, seed: int = 0, progress: bool = True) -> VQAReport:
    """Asks `pipe` (a LightBagelPipeline) every question with its rendered scene."""
    answers = []
    items = vqa_items(per_kind, seed)
    for item in track(items, len(items), "vqa question", enabled=progress):
        image = shapes.render(item.scene, pipe.image_size)
        answers.append((item, pipe.understand(item.question.question, [image], max_new_tokens=16)))
    wins: dict[str, list[bool]] = {}
    for item, reply in answers:
        wins.setdefault(item.question.kind, []).append(reply == item.question.answer)
    return VQAReport({k: sum(v) / len(v) for k, v in wins.items()}, {k: len(v) for k, v in wins.items()}, answers)
