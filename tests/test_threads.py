"""One CPU thread policy for every entry point (lightbagel/threads.py)."""

from __future__ import annotations

import torch

from lightbagel.threads import apply_threads, chosen_threads


def test_the_flag_beats_the_environment_which_beats_the_recipe(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert chosen_threads(flag=2, recipe=1) == 2
    assert chosen_threads(recipe=1) == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert chosen_threads(recipe=1) == 1
    assert chosen_threads() is None  # torch's own default


def test_apply_sets_torch(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        assert apply_threads(flag=2) == 2 == torch.get_num_threads()
        assert apply_threads(recipe=1) == 1
    finally:
        torch.set_num_threads(before)
