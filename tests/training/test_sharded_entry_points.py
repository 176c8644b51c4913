"""Every entry point the trainer calls on the sharded model runs under FSDP2 (one rank, gloo):
a method other than `forward` must be registered, or the root's weights stay sharded DTensors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from lightbagel import shapes
from lightbagel.data.chat import collate_chat
from lightbagel.recipe import load_recipe
from lightbagel.shapes import questions
from lightbagel.training.module import LightBagelModule

TINY = Path(__file__).resolve().parents[2] / "recipes" / "tiny.yaml"


@pytest.fixture
def one_rank(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        yield init_device_mesh("cpu", (1,), mesh_dim_names=("data_parallel",))
    finally:
        dist.destroy_process_group()


def sharded(overrides: list[str], mesh) -> LightBagelModule:
    module = LightBagelModule(load_recipe(TINY, overrides).config)
    module._device_mesh = mesh  # what ModelParallelStrategy sets before configure_model
    module.configure_model()
    return module


def test_the_understanding_objective_runs_on_the_sharded_model(one_rank):
    module = sharded(["understanding.freeze=false", "objective.und_weight=1.0", "objective.flow_weight=0.0"],
                     one_rank)
    scene = shapes.sample_scene(random.Random(0))
    asked = questions.ask(random.Random(1), scene)
    sample = {"conversation": [{"role": "user", "content": "<image>" + asked.question},
                               {"role": "assistant", "content": asked.answer}],
              "images": [shapes.render(scene, 32)], "text": asked.question}
    loss, n_answer = module.understanding_loss(collate_chat(module.model.und.processor, [sample, sample]))
    loss.backward()
    assert torch.isfinite(loss) and n_answer > 0


def test_a_packed_flow_matching_batch_runs_on_the_sharded_model(one_rank):
    from lightbagel.data.collate import Collator
    from lightbagel.shapes.heldout import validation_samples

    module = sharded(["data.packing.layout=packed"], one_rank)
    batch = Collator(module.model.und.processor, 32)(validation_samples(4, 32, seed=0))
    assert bool(batch.has_source.any()) and not bool(batch.has_source.all())  # T2I and edits in one row
    loss, _ = module.flow_matching_loss(batch, seeds=[0, 1, 2, 3])
    loss.backward()
    assert torch.isfinite(loss)
