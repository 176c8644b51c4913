"""The lazy registry: names are listed and recipes validated without importing an adapter, and
every built-in "module:attr" path resolves to a builder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lightbagel import registry

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "diffusers", "lightning")

# Validates the tiny recipe, and every override path a user may name, in a fresh interpreter.
PROBE = """
import json, sys
from lightbagel.recipe import load_recipe
load_recipe(sys.argv[1], ["understanding.adapter=qwen2_vl", "fusion.block=none", "trainer.strategy=fsdp2"])
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})))
"""


def test_validating_a_recipe_imports_no_torch():
    probe = PROBE.format(heavy=set(HEAVY))
    out = subprocess.run([sys.executable, "-c", probe, str(REPO / "recipes/tiny.yaml")], capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out.splitlines()[-1]) == []


@pytest.mark.parametrize("reg", [registry.UNDERSTANDING, registry.GENERATION, registry.VAE, registry.FUSION,
                                 registry.STRATEGY], ids=lambda r: r.kind)
def test_every_built_in_path_resolves_to_a_callable(reg):
    for name in reg.names():
        assert reg.path(name) is not None, f"{reg.kind} {name!r} has no path"
        assert callable(reg.get(name)), reg.path(name)


def test_a_registered_name_is_listed_and_a_duplicate_refused():
    reg = registry.Registry("toy", {"a": "json:dumps"})
    reg.register("b")(len)
    assert reg.names() == ["a", "b"] and reg.get("a") is json.dumps and reg.get("b") is len
    with pytest.raises(ValueError, match="'a' is registered twice"):
        reg.register("a")(len)
    with pytest.raises(registry.UnknownComponentError, match="unknown toy 'c'; allowed: a, b"):
        reg.get("c")
