"""Fixtures of the data tests (helpers live in mixture_helpers.py)."""

from __future__ import annotations

import pytest
from mixture_helpers import write_source


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory) -> dict[str, list[str]]:
    root = tmp_path_factory.mktemp("sources")
    return {"a": write_source(root / "a", "a", 60), "b": write_source(root / "b", "b", 40, size=(32, 16))}
