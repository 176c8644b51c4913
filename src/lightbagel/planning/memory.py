"""Per-GPU memory under FSDP2 full sharding: weights, gradients, AdamW state, activations.

Every parameter, gradient and optimizer state is sharded over all ranks (gpus x nodes).
Bytes per element follow the trainer precision: `bf16-true` keeps weights, gradients and both
AdamW moments in bf16; `*-mixed` and `32-true` keep fp32 masters, gradients and moments. FSDP2
also all-gathers one unit at a time at compute precision, with the next one prefetched: two
copies of the largest unit (a block, or the VLM's embedding table). Activations are the
measured saved bytes (planning/activations.py) of one packed sequence per GPU.
Not modelled: activation gradients alive during backward, allocator fragmentation, NCCL buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lightbagel.model import LightBagel
from lightbagel.planning.activations import ActivationBytes
from lightbagel.planning.parts import Part, vision_tower
from lightbagel.planning.workload import Workload

# precision -> (weight, gradient, AdamW state, compute) bytes per element
PRECISION_BYTES = {
    "bf16-true": (2, 2, 4, 2),
    "bf16-mixed": (4, 4, 8, 2),
    "16-mixed": (4, 4, 8, 2),
    "32-true": (4, 4, 8, 4),
}


@dataclass(frozen=True)
class MemoryPlan:
    world: int
    weights: float
    gradients: float
    optimizer: float
    gather: float
    activations: float
    activations_checkpointed: float

    @property
    def states(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.gather

    @property
    def total(self) -> float:
        return self.states + self.activations

    @property
    def total_checkpointed(self) -> float:
        return self.states + self.activations_checkpointed


def largest_unit(model: LightBagel) -> int:
    """Parameters of the largest FSDP unit: one block of any tower, or the VLM's embeddings."""
    blocks: list[nn.Module] = [*model.und._lm.layers, *model.fusion, *getattr(model.gen.dit, "blocks", [])]
    vit = vision_tower(model)
    blocks += list(getattr(vit, "blocks", [])) if vit is not None else []
    blocks.append(model.und.model.get_input_embeddings())
    return max(sum(p.numel() for p in b.parameters()) for b in blocks)


def plan_memory(model: LightBagel, parts: list[Part], workload: Workload, world: int, precision: str,
                activations: dict[str, ActivationBytes]) -> MemoryPlan:
    if precision not in PRECISION_BYTES:
        raise ValueError(f"trainer.precision {precision!r} has no memory model; allowed: {', '.join(PRECISION_BYTES)}")
    weight_b, grad_b, optim_b, compute_b = PRECISION_BYTES[precision]
    total = sum(p.total for p in parts)
    trainable = sum(p.trainable for p in parts)
    samples = workload.samples
    acts = sum(n * activations[kind].total for kind, n in samples.items())
    acts_ckpt = sum(n * activations[kind].checkpointed for kind, n in samples.items())
    return MemoryPlan(
        world=world,
        weights=total * weight_b / world,
        gradients=trainable * grad_b / world,
        optimizer=trainable * optim_b / world,
        gather=2 * largest_unit(model) * compute_b,
        activations=acts,
        activations_checkpointed=acts_ckpt,
    )
