"""Per-GPU memory under FSDP2 full sharding: weights, gradients, AdamW state, activations.

Every parameter, gradient and optimizer state is sharded over all ranks (gpus x nodes), but the
frozen VAE's weights, whole on every rank (training/sharding.py).
Bytes per element follow the precision plan (precision.py) weight by weight: trainable weights,
their gradients and both AdamW moments in the master dtype (fp32 but under an opted-in
`bf16-true`), frozen weights in the frozen dtype (bf16 under `bf16-*`), the fp32 list (VAE,
rotary tables, timestep path, modulation tables) in fp32. FSDP2 also all-gathers its groups
(training/sharding.py) as the forward sees them (compute copies, the fp32 list in fp32): one
block at a time with the next one prefetched, two copies of the largest block; and the root
group, which holds everything no block holds (the VLM's embedding table and LM head, its ViT, the
DiT's embedders and head) and stays gathered from the forward through the backward, as FSDP2
keeps its root. Activations are the measured saved bytes (planning/activations.py) of one packed
sequence per GPU.
Not modelled: activation gradients alive during backward, allocator fragmentation, NCCL buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lightbagel.model import LightBagel
from lightbagel.planning.activations import ActivationBytes
from lightbagel.planning.parts import Part
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


def fsdp_blocks(model: LightBagel) -> list[nn.Module]:
    """The blocks that are FSDP2 groups of their own: VLM decoder layers, DiT blocks, fusion blocks
    (training/sharding.py `model_units`; the ViT's blocks stay in the root group)."""
    dit = model.gen.dit
    return [*model.und._lm.layers, *model.fusion, *getattr(dit, "blocks", getattr(dit, "transformer_blocks", []))]


def _bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def gather_bytes(model: LightBagel) -> tuple[int, int]:
    """(Gathered bytes of the largest block, of the root group) for a model whose weights are in
    the dtypes the forward sees; the VAE is in no group (whole on every rank)."""
    blocks = fsdp_blocks(model)
    in_blocks = {id(p) for b in blocks for p in b.parameters()} | {id(p) for p in model.gen.vae.parameters()}
    root = [p for p in model.parameters() if id(p) not in in_blocks]
    return max(_bytes(b.parameters()) for b in blocks), _bytes(root)


def weight_bytes(model: LightBagel, plan: PrecisionPlan, world: int) -> float:
    """Stored bytes per rank, each weight in its planned dtype: 1/world of each sharded weight, the VAE whole."""
    total = 0.0
    for name, p in model.named_parameters():
        nbytes = p.numel() * plan.storage(name, p.requires_grad).itemsize
        total += nbytes if name.startswith("gen.vae.") else nbytes / world
    return total


def plan_memory(model: LightBagel, parts: list[Part], workload: Workload, world: int, plan: PrecisionPlan,
                activations: dict[str, ActivationBytes]) -> MemoryPlan:
    master_b = plan.precision.master.itemsize
    block, root = gather_bytes(model)
    trainable = sum(p.trainable for p in parts)
    samples = workload.samples
    acts = sum(n * activations[kind].total for kind, n in samples.items())
    acts_ckpt = sum(n * activations[kind].checkpointed for kind, n in samples.items())
    return MemoryPlan(
        world=world,
        weights=weight_bytes(model, plan, world),
        gradients=trainable * master_b / world,
        optimizer=2 * trainable * master_b / world,
        gather=2 * block + root,
        activations=acts,
        activations_checkpointed=acts_ckpt,
    )
