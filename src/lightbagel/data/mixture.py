"""Mixture weights as a function of the training step, and the per-draw source choice.

Stage 0 holds the sources' own weights; each `stages` entry of the data card starts a new stage
at its ``start_step``. The choice of draw ``d`` of slot ``s`` is a pure function of
``(seed, s, d)``: no random state to checkpoint, and a resumed stream draws the same sources.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from itertools import accumulate

from lightbagel.errors import DataError
from lightbagel.recipe.schema import SourceConfig, StageConfig


@dataclass(frozen=True)
class Schedule:
    names: tuple[str, ...]
    starts: tuple[int, ...]  # first step of each stage; starts[0] == 0
    cumulative: tuple[tuple[float, ...], ...]  # per stage, cumulative normalised weights

    @classmethod
    def build(cls, sources: list[SourceConfig], stages: list[StageConfig]) -> "Schedule":
        names = tuple(s.name for s in sources)
        if len(set(names)) != len(names):
            raise DataError(f"data.sources: names must be unique, got {list(names)}")
        starts, tables = [0], [[float(s.weight) for s in sources]]
        for i, stage in enumerate(sorted(stages, key=lambda s: s.start_step)):
            unknown = set(stage.weights) - set(names)
            if unknown:
                raise DataError(f"data.stages[{i}].weights: unknown sources {sorted(unknown)}; "
                                 f"sources are {list(names)}")
            table = [float(stage.weights.get(n, 0.0)) for n in names]
            if stage.start_step == 0:
                tables[0] = table
            elif stage.start_step == starts[-1]:
                raise DataError(f"data.stages: two stages start at step {stage.start_step}")
            else:
                starts.append(int(stage.start_step))
                tables.append(table)
        for i, table in enumerate(tables):
            if any(w < 0 for w in table) or sum(table) <= 0:
                raise DataError(f"data mixture stage {i}: weights must be >= 0 with a positive sum, "
                                 f"got {dict(zip(names, table))}")
        cumulative = tuple(tuple(c / sum(t) for c in accumulate(t)) for t in tables)
        return cls(names, tuple(starts), cumulative)

    def stage_at(self, step: int) -> int:
        return bisect.bisect_right(self.starts, step) - 1

    def weights(self, stage: int) -> dict[str, float]:
        cum = self.cumulative[stage]
        return {n: c - (cum[i - 1] if i else 0.0) for i, (n, c) in enumerate(zip(self.names, cum))}

    def choose(self, stage: int, seed: int, slot: int, draw: int) -> int:
        """Index of the source of draw ``draw`` of slot ``slot``."""
        u = random.Random(f"{seed}:{slot}:{draw}").random()
        cum = self.cumulative[stage]
        return min(bisect.bisect_right(cum, u), len(cum) - 1)
