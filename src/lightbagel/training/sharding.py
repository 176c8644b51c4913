"""FSDP2 and activation checkpointing, one unit per VLM decoder layer, DiT block and fusion block.

Each block is its own `fully_shard` group, so frozen blocks (the VLM) and trainable ones never
share a group; the root group holds the rest (embeddings, ViT, heads). Parameters of a group are
gathered only while its forward runs, which FSDP2 learns from module hooks. Each adapter declares
where its blocks live (`blocks`) and whether `block(i, ...)` calls the block module
(`block_called`, backbones/*/base.py); called blocks get the hooks for free, the others (Wan's
block runs its sub-layers itself, because its own forward expects umT5 text) are routed through a
per-block method registered with `register_fsdp_forward_method`.

Mixed precision (precision.py): a group gathers its trainable fp32 masters as bf16 compute
copies and reduces gradients in fp32. A group holding a weight the plan keeps in fp32 gathers
in fp32 instead: the root (time embedding, modulation table), the VAE, and a Wan block, whose
`scale_shift_table` sits beside the block's layers; that block's trainable layers then form a
bf16 sub-group of their own, so the bulk of the DiT still gathers in bf16.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import Sequence

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed._composable import checkpoint as checkpoint_module
from torch.utils.checkpoint import checkpoint as checkpoint_call

from lightbagel.model import LightBagel
from lightbagel.precision import PrecisionPlan
from lightbagel.recipe.schema import TrainerConfig

ROUTED = "lightbagel_block"  # name of the per-block method of routed blocks


@dataclass
class BlockUnits:
    """Where an adapter keeps its blocks and how `owner.block(i, ...)` reaches them."""

    owner: nn.Module
    modules: Sequence[nn.Module]
    called: bool  # True: owner.block(i) calls modules[i](...), so module hooks see each block

    @classmethod
    def of(cls, adapter: nn.Module) -> "BlockUnits":
        """The units an adapter declares (`blocks`, `block_called`)."""
        return cls(adapter, operator.attrgetter(adapter.blocks)(adapter), adapter.block_called)


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


@dataclass
class ShardPlan:
    """What `parallelize` applies; built from the trainer section of a recipe."""

    precision: PrecisionPlan
    activation_checkpointing: bool = False
    cpu_offload: bool = False


def shard_plan(tr: TrainerConfig, precision: PrecisionPlan) -> ShardPlan:
    return ShardPlan(precision, tr.activation_checkpointing, tr.cpu_offload)


def model_units(model: LightBagel) -> list[BlockUnits]:
    return [BlockUnits.of(model.und), BlockUnits.of(model.gen), BlockUnits(model, model.fusion, called=True)]


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
    from torch.distributed.fsdp import register_fsdp_forward_method

    shard = _Sharder(model, plan, mesh)
    for unit in units:
        for module in unit.modules:
            shard.unit(module)
            if not unit.called:
                register_fsdp_forward_method(module, ROUTED)
    # The VAE runs before the fused forward (encode). FSDP2 makes the first group to run forward
    # its root, so a sharded VAE would break the model's root; it stays whole on every rank
    # (frozen and fp32: no gradient to reduce, no compute copy).
    shard.unit(model, ignored=frozenset(model.gen.vae.parameters()))
    for name in model.fsdp_entry_points:
        register_fsdp_forward_method(model, name)
    return model


class _Sharder:
    """`fully_shard` with the precision plan's policy per group (see the module docstring)."""

    def __init__(self, model: nn.Module, plan: ShardPlan, mesh):
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy

        precision = plan.precision
        # By identity: `fully_shard` replaces a group's parameters by DTensors, so those seen here
        # are the ones no group holds yet.
        self.kept = {id(p) for n, p in model.named_parameters() if precision.keeps(n)}
        # Inputs pass through as they are (torchtitan does the same): a bf16 group would cast the fp32
        # rotary cos/sin to bf16 (docs/full_size.md "Precision") and rebuild every `OrderMask` it is
        # handed, so the block mask was built again in every group. Autocast runs the compute in bf16.
        self.full = MixedPrecisionPolicy(cast_forward_inputs=False)
        self.mixed = MixedPrecisionPolicy(param_dtype=precision.precision.compute, reduce_dtype=torch.float32,
                                          cast_forward_inputs=False) if precision.mixed else self.full
        self.kwargs = {"mesh": mesh, "offload_policy": CPUOffloadPolicy() if plan.cpu_offload else OffloadPolicy()}

    def group(self, modules: nn.Module | list[nn.Module], ignored: frozenset = frozenset()) -> None:
        from torch.distributed.fsdp import fully_shard

        params = [p for m in (modules if isinstance(modules, list) else [modules]) for p in _unsharded(m)]
        policy = self.full if self._keeps_fp32(params, ignored) else self.mixed
        fully_shard(modules, mp_policy=policy, ignored_params=set(ignored) or None, **self.kwargs)

    def unit(self, module: nn.Module, ignored: frozenset = frozenset()) -> None:
        """A block or the root. One holding an fp32-kept weight first gets a compute-dtype sub-group
        of its other trainable layers (FSDP2 also wants one dtype among a group's trainable
        weights, which bf16-true masters beside the fp32 list would break)."""
        if self.mixed is not self.full and self._keeps_fp32(_unsharded(module), ignored):
            leaves = [m for m in module.modules() if self._trainable_leaf(m)]
            if leaves:
                self.group(leaves)
        self.group(module, ignored)

    def _keeps_fp32(self, params: list[nn.Parameter], ignored: frozenset) -> bool:
        """Whether a group of these parameters holds a weight the plan keeps in fp32 (ignored ones aside)."""
        return any(id(p) in self.kept and p not in ignored for p in params)

    def _trainable_leaf(self, module: nn.Module) -> bool:
        own = list(module.parameters(recurse=False))
        return bool(own) and len(own) == len(_unsharded(module, recurse=False)) and \
            all(p.requires_grad and id(p) not in self.kept for p in own)


def _unsharded(module: nn.Module, recurse: bool = True) -> list[nn.Parameter]:
    """Its parameters no FSDP group holds yet."""
    from torch.distributed.tensor import DTensor

    return [p for p in module.parameters(recurse=recurse) if not isinstance(p, DTensor)]


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
