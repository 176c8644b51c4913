"""The ablation tools: held-out flow-matching loss and the one-table comparison."""

from __future__ import annotations

import math

import torch

from lightbagel.evaluation.heldout import heldout_loss
from lightbagel.evaluation.report import comparison_table


def test_heldout_loss_is_deterministic_and_separates_models(tiny_model):
    first = heldout_loss(tiny_model, 32, 32, n=8)
    assert set(first) == {"heldout_loss", "heldout_loss_t2i", "heldout_loss_edit"}
    assert all(math.isfinite(v) for v in first.values())
    assert heldout_loss(tiny_model, 32, 32, n=8) == first
    with torch.no_grad():
        tiny_model.gen.dit.proj_out.weight.mul_(0.0)
        tiny_model.gen.dit.proj_out.bias.zero_()
    # A model that predicts v = 0 pays E|eps - x0|^2 > 1.
    assert heldout_loss(tiny_model, 32, 32, n=8)["heldout_loss"] > 1.0


def test_comparison_table_has_a_row_per_model_and_aligned_columns():
    table = comparison_table({
        "tiny_a": {"synthetic/overall": 0.5, "synthetic/heldout_loss": 0.25},
        "tiny_b": {"synthetic/overall": 0.75},
    })
    lines = table.splitlines()
    assert lines[0] == "| model | overall | heldout_loss |"
    assert lines[2] == "| tiny_a | 0.5000 | 0.2500 |"
    assert lines[3] == "| tiny_b | 0.7500 |  |"
