import itertools
import math

import pytest
import torch
from mixture_helpers import make_plan

from lightbagel.data.mixture import Schedule
from lightbagel.data.pipeline import MixtureDataset
from lightbagel.recipe.schema import SourceConfig, StageConfig


def batches(plan, n: int, workers: int = 0):
    if workers == 0:
        return list(itertools.islice(iter(MixtureDataset(plan)), n))
    loader = torch.utils.data.DataLoader(MixtureDataset(plan), batch_size=None, num_workers=workers,
                                         collate_fn=lambda b: b)
    return list(itertools.islice(iter(loader), n))


def shares(batch_list) -> dict[str, int]:
    counts: dict[str, int] = {}
    for b in batch_list:
        for name in b.data_state["sources"]:
            counts[name] = counts.get(name, 0) + 1
    return counts


def test_weights_respected_over_thousands_of_samples(two_sources):
    plan = make_plan({"a": (two_sources["a"], 3.0), "b": (two_sources["b"], 1.0)}, batch_size=50)
    got, n = {}, 0
    for batch in MixtureDataset(plan):  # the sources' images differ in size: two buckets
        for name in batch.data_state["sources"]:
            got[name] = got.get(name, 0) + 1
        n += len(batch)
        if n >= 3000:
            break
    # Binomial(3000, 0.25): 4 standard deviations is about 95 samples.
    assert abs(got["b"] - 0.25 * n) < 4 * math.sqrt(n * 0.25 * 0.75), got


def test_schedule_draws_follow_weights_per_stage():
    sources = [SourceConfig(name=n, weight=w) for n, w in (("x", 1.0), ("y", 1.0), ("z", 2.0))]
    schedule = Schedule.build(sources, [StageConfig(start_step=100, weights={"x": 1.0})])
    picks = [schedule.choose(0, seed=0, slot=0, draw=d) for d in range(8000)]
    for index, p in enumerate((0.25, 0.25, 0.5)):
        assert abs(picks.count(index) / 8000 - p) < 0.02
    assert {schedule.choose(1, 0, 0, d) for d in range(500)} == {0}
    assert [schedule.stage_at(s) for s in (0, 99, 100, 10**6)] == [0, 0, 1, 1]


@pytest.mark.parametrize("workers,batches_per_step", [(0, 1), (2, 1), (0, 2)])
def test_stage_switch_at_the_configured_step(two_sources, workers, batches_per_step):
    switch = 5
    plan = make_plan({"a": (two_sources["a"], 1.0), "b": (two_sources["b"], 0.0)},
                     stages=[(switch, {"b": 1.0})], batch_size=4, token_budget=200,
                     batches_per_step=batches_per_step)
    got = batches(plan, 2 * switch * batches_per_step, workers)
    first = switch * batches_per_step  # the first batch of step `switch`
    assert all(set(b.data_state["sources"]) == {"a"} for b in got[:first])
    assert all(set(b.data_state["sources"]) == {"b"} for b in got[first:])
    assert all(b.data_state["stage"] == (i >= first) for i, b in enumerate(got))


@pytest.mark.parametrize("stages,match", [
    ([StageConfig(start_step=10, weights={"nope": 1.0})], "unknown sources"),
    ([StageConfig(start_step=10, weights={"a": 0.0})], "positive sum"),
])
def test_bad_schedule_is_a_one_line_error(stages, match):
    with pytest.raises(ValueError, match=match):
        Schedule.build([SourceConfig(name="a")], stages)
