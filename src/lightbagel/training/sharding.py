"""FSDP2 and activation checkpointing, one unit per VLM decoder layer, DiT block and fusion block.

Each block is its own `fully_shard` group, so frozen blocks (the VLM) and trainable ones never
share a group; the root group holds the rest (embeddings, ViT, heads). Parameters of a group are
gathered only while its forward runs, which FSDP2 learns from module hooks. Adapters whose
`block(i, ...)` calls the block module (`called=True`) get that for free; the others (Wan's
block runs its sub-layers itself, because its own forward expects umT5 text) are routed through a
per-block method registered with `register_fsdp_forward_method`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed._composable import checkpoint as checkpoint_module
from torch.utils.checkpoint import checkpoint as checkpoint_call

from lightbagel.model import LightBagel
from lightbagel.recipe.schema import TrainerConfig
from lightbagel.registry import Registry

ROUTED = "lightbagel_block"  # name of the per-block method of routed blocks


@dataclass
class BlockUnits:
    """Where an adapter keeps its blocks and how `owner.block(i, ...)` reaches them."""

    owner: nn.Module
    modules: Sequence[nn.Module]
    called: bool  # True: owner.block(i) calls modules[i](...), so module hooks see each block


BLOCK_UNITS: Registry = Registry("block layout")


class FSDP2Strategy(ModelParallelStrategy):
    """Every rank of every node shards the model (pure FSDP: data parallel, no tensor parallel).

    ModelParallelStrategy's "auto" sizes give tensor parallelism inside a node; LightBagel's
    blocks are not tensor-parallelised, so the whole world is one data-parallel dimension.
    """

    def __init__(self, **kwargs):
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, save_distributed_checkpoint=True, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


@BLOCK_UNITS.register("qwen2_5_vl")
def qwen_units(und) -> BlockUnits:
    return BlockUnits(und, und.model.model.language_model.layers, called=True)


@BLOCK_UNITS.register("wan")
def wan_units(gen) -> BlockUnits:
    return BlockUnits(gen, gen.dit.blocks, called=False)


BLOCK_UNITS.register("qwen2_vl")(qwen_units)  # Qwen2-VL keeps its layers where Qwen2.5-VL does


@BLOCK_UNITS.register("sd3")
def sd3_units(gen) -> BlockUnits:
    # Like Wan, the SD3 adapter runs a block's image-stream sub-layers itself (no text stream).
    return BlockUnits(gen, gen.dit.transformer_blocks, called=False)


@dataclass
class ShardPlan:
    """What `parallelize` applies; built from the trainer section of a recipe."""

    activation_checkpointing: bool = False
    mixed_precision: Optional[torch.dtype] = None  # param dtype of the compute copies
    cpu_offload: bool = False


def shard_plan(tr: TrainerConfig) -> ShardPlan:
    mixed = torch.bfloat16 if tr.precision == "bf16-mixed" else None
    return ShardPlan(tr.activation_checkpointing, mixed, getattr(tr, "cpu_offload", False))


def model_units(model: LightBagel, und_adapter: str, gen_adapter: str) -> list[BlockUnits]:
    return [
        BLOCK_UNITS.get(und_adapter)(model.und),
        BLOCK_UNITS.get(gen_adapter)(model.gen),
        BlockUnits(model, model.fusion, called=True),
    ]


def parallelize(model: LightBagel, units: list[BlockUnits], plan: ShardPlan, mesh=None) -> LightBagel:
    """Activation checkpointing per block, then (with a device mesh) FSDP2 per block and root."""
    for unit in units:
        if not unit.called:
            _route(unit, plan.activation_checkpointing)
        elif plan.activation_checkpointing:
            for module in unit.modules:
                checkpoint_module(module)  # hook-based: no wrapper, state-dict keys unchanged
    if mesh is None:
        return model
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        MixedPrecisionPolicy,
        OffloadPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    kwargs = {
        "mesh": mesh,
        "mp_policy": MixedPrecisionPolicy(param_dtype=plan.mixed_precision, reduce_dtype=torch.float32)
        if plan.mixed_precision is not None else MixedPrecisionPolicy(),
        "offload_policy": CPUOffloadPolicy() if plan.cpu_offload else OffloadPolicy(),
    }
    for unit in units:
        for module in unit.modules:
            fully_shard(module, **kwargs)
            if not unit.called:
                register_fsdp_forward_method(module, ROUTED)
    vae = model.gen.vae
    if any(True for _ in vae.parameters()):
        # The VAE runs outside the fused forward (encode before it, decode after sampling).
        fully_shard(vae, **kwargs)
        register_fsdp_forward_method(vae, "encode")
        register_fsdp_forward_method(vae, "decode")
    fully_shard(model, **kwargs)
    return model


def _route(unit: BlockUnits, checkpointing: bool) -> None:
    """Makes `owner.block(i, ...)` run as `modules[i].lightbagel_block(...)`."""
    body = unit.owner.block  # the adapter's own method, bound before it is replaced below
    for index, module in enumerate(unit.modules):
        run = functools.partial(body, index)
        if checkpointing:
            run = functools.partial(checkpoint_call, run, use_reentrant=False)
        object.__setattr__(module, ROUTED, run)
    modules = unit.modules

    def block(index: int, *args, **kwargs):
        return getattr(modules[index], ROUTED)(*args, **kwargs)

    object.__setattr__(unit.owner, "block", block)
