"""Shared fixtures: the tiny recipe and a tiny fused model, built in milliseconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
torch.set_num_threads(1)  # tiny models: more threads only spin, and tests share 2 cores

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "tiny.yaml"


@pytest.fixture(scope="session", autouse=True)
def repository_stays_clean():
    """Tests write under tmp dirs only: a `data/`, `outputs/` or `mlruns/` folder that appears in
    the repository during the session fails it (one that was there before is the user's)."""
    watched = [REPO / "data", REPO / "outputs", REPO / "mlruns"]
    before = {p for p in watched if p.exists()}
    yield
    created = [str(p) for p in watched if p.exists() and p not in before]
    assert not created, f"tests wrote into the repository: {created}; use tmp_path"


@pytest.fixture(scope="session")
def tiny_recipe():
    from lightbagel.recipe import load_recipe

    return load_recipe(TINY)


@pytest.fixture
def tiny_model(tiny_recipe):
    from lightbagel.model import build_model

    return build_model(tiny_recipe.config).eval()


@pytest.fixture
def make_batch():
    """A mixed T2I + edit batch from the shapes world, collated for a given model."""
    from lightbagel.data.collate import Collator
    from lightbagel.shapes.heldout import validation_samples

    def make(model, n: int = 4, image_size: int = 32, seed: int = 0):
        torch.manual_seed(seed)
        return Collator(model.und.processor, image_size)(validation_samples(n, image_size, seed=seed))

    return make
