"""`make_plan`: a recipe's model built on the meta device, counted, costed and sized."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from tqdm.auto import tqdm

from lightbagel.model import LightBagel, build_skeleton
from lightbagel.planning.activations import ActivationBytes, measure_sample
from lightbagel.planning.flops import PartFlops, sequence_flops
from lightbagel.planning.memory import MemoryPlan, plan_memory
from lightbagel.planning.packing import PackingSample, sample_packing
from lightbagel.planning.parts import Part, model_parts
from lightbagel.planning.workload import Workload, make_workload
from lightbagel.precision import apply_precision, inference_plan, training_plan
from lightbagel.recipe.schema import RecipeConfig


@dataclass(frozen=True)
class Plan:
    name: str
    parts: list[Part]
    workload: Workload
    flops: list[PartFlops]
    activations: dict[str, ActivationBytes]
    memory: MemoryPlan
    nodes: int
    gpus: int
    packing: Optional[PackingSample] = None  # a measured sample of the data pipeline, when asked for
    # The same sequence with fusion.und_writeback flipped: what the paper's write-back costs.
    writeback: Optional[tuple[bool, list[PartFlops]]] = None


def make_plan(recipe: RecipeConfig, gpus: int, nodes: int, seq_len: int, text_tokens: int = 128,
              edit_fraction: Optional[float] = None, progress: bool = True, data_sample: int = 0) -> Plan:
    """`data_sample` > 0 also counts that many batches of the recipe's data pipeline (planning/packing.py)."""
    if min(gpus, nodes, seq_len, text_tokens) < 1:
        raise ValueError("--gpus, --nodes, --seq-len and --text-tokens must be >= 1")
    if edit_fraction is None:
        weights = recipe.data.task_weights
        edit_fraction = weights.get("edit", 0.0) / max(sum(weights.values()), 1e-12)
    if not 0.0 <= edit_fraction <= 1.0:
        raise ValueError(f"--edit-fraction must be in [0, 1], got {edit_fraction}")
    steps = tqdm(total=4, desc="planning", disable=not progress, leave=False)
    model: LightBagel = build_skeleton(recipe)
    precision = training_plan(recipe.trainer, model)
    # Weights as the forward sees them: compute copies, the fp32 list in fp32, the DiT's residual
    # stream in fp32 where the training plan keeps it so (precision.py).
    seen = replace(inference_plan(model, precision.precision.compute), fp32_residual=precision.fp32_residual)
    apply_precision(model, seen)
    steps.update()
    workload = make_workload(model, seq_len, recipe.data.image_size, recipe.data.vit_image_size, text_tokens,
                             edit_fraction)
    activations = {}
    for kind in ("t2i", "edit"):
        activations[kind] = measure_sample(model, getattr(workload, kind), workload.image_size,
                                           precision.precision.compute)
        steps.update()
    parts = model_parts(model)
    flops = sequence_flops(model, workload)
    writeback = _flipped_writeback(recipe, workload, precision.precision.compute)
    steps.update()
    steps.close()
    memory = plan_memory(model, parts, workload, gpus * nodes, precision, activations)
    packing = sample_packing(recipe, model, data_sample) if data_sample > 0 else None
    return Plan(recipe.name, parts, workload, flops, activations, memory, nodes, gpus, packing, writeback)


def _flipped_writeback(recipe: RecipeConfig, workload: Workload,
                       compute: torch.dtype) -> Optional[tuple[bool, list[PartFlops]]]:
    """FLOPs of the sequence with `fusion.und_writeback` flipped (none when no block fuses), its
    weights cast as `make_plan` casts the recipe's own model."""
    if recipe.fusion.block == "none":
        return None
    flipped = replace(recipe, fusion=replace(recipe.fusion, und_writeback=not recipe.fusion.und_writeback))
    model = build_skeleton(flipped)
    apply_precision(model, inference_plan(model, compute))
    return flipped.fusion.und_writeback, sequence_flops(model, workload)
