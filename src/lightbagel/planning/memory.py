"""Per-GPU memory under FSDP2 full sharding: weights, gradients, AdamW state, activations.

Every parameter, gradient and optimizer state is sharded over all ranks (gpus x nodes), but the
frozen VAE's weights, whole on every rank (training/sharding.py).
Bytes per element follow the precision plan (precision.py) weight by weight: trainable weights,
their gradients and both AdamW moments in the master dtype (fp32 but under an opted-in
`bf16-true`), frozen weights in the frozen dtype (bf16 under `bf16-*`), the fp32 list (VAE,
rotary tables, timestep path, modulation tables) in fp32. FSDP2 also all-gathers one unit at a
time at compute precision, with the next one prefetched: two copies of the largest unit (a
block, or the VLM's embedding table). Activations are the
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
from lightbagel.precision import PrecisionPlan


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


def weight_bytes(model: LightBagel, plan: PrecisionPlan, world: int) -> float:
    """Stored bytes per rank, each weight in its planned dtype: 1/world of each sharded weight, the VAE whole."""
    total = 0.0
    for name, p in model.named_parameters():
        nbytes = p.numel() * plan.storage(name, p.requires_grad).itemsize
        total += nbytes if name.startswith("gen.vae.") else nbytes / world
    return total


def plan_memory(model: LightBagel, parts: list[Part], workload: Workload, world: int, plan: PrecisionPlan,
                activations: dict[str, ActivationBytes]) -> MemoryPlan:
    master_b, compute_b = plan.precision.master.itemsize, plan.precision.compute.itemsize
    trainable = sum(p.trainable for p in parts)
    samples = workload.samples
    acts = sum(n * activations[kind].total for kind, n in samples.items())
    acts_ckpt = sum(n * activations[kind].checkpointed for kind, n in samples.items())
    return MemoryPlan(
        world=world,
        weights=weight_bytes(model, plan, world),
        gradients=trainable * master_b / world,
        optimizer=2 * trainable * master_b / world,
        gather=2 * largest_unit(model) * compute_b,
        activations=acts,
        activations_checkpointed=acts_ckpt,
    )
