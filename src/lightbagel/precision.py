"""The precision plan: per weight, the dtype it is stored in, and the one dtype table.

Decided here and nowhere else (docs/full_size.md, "Precision"):
- trainable weights (DiT, fusion, LoRA) keep fp32 master copies, so AdamW state and gradients
  are fp32 too: at lr 3e-5 on weights of std ~0.02 a step is below half a bf16 ulp for most
  entries, and pure bf16 training silently drops it;
- frozen weights (VLM, the DiT's unused text path) are stored in the compute dtype;
- whatever the original models run in fp32 stays fp32 (each adapter's `keep_in_fp32`): rotary
  frequencies, the timestep embedding path, the adaLN modulation tables, the VAE and its latent
  statistics;
- compute runs in bf16 through autocast, and under FSDP2 through `MixedPrecisionPolicy`
  (training/sharding.py), with gradients reduced in fp32;
- with `trainer.fp32_residual` (on by default, as Wan2.2 runs) the DiT's residual stream and
  output head stay fp32 under bf16 training (docs/full_size.md has the measured error).
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from lightbagel.errors import LightBagelError
from lightbagel.recipe.schema import DTYPE_NAMES, TrainerConfig

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}


def dtype_named(name: str, where: str = "dtype") -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"{where}: unknown dtype {name!r}; allowed: {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclass(frozen=True)
class Precision:
    """What one `trainer.precision` value means for storage and compute."""

    lightning: str  # the flag handed to Lightning (autocast or not)
    compute: torch.dtype
    master: torch.dtype  # trainable weights, their gradients and AdamW state
    frozen: torch.dtype  # frozen weights

    def read_dtype(self, frozen: bool) -> torch.dtype:
        """The dtype a backbone's checkpoint is read in (host memory while loading)."""
        return self.frozen if frozen else self.master


_F32, _BF16, _F16 = torch.float32, torch.bfloat16, torch.float16
PRECISIONS: dict[str, Precision] = {
    "32-true": Precision("32-true", _F32, _F32, _F32),
    "bf16-mixed": Precision("bf16-mixed", _BF16, _F32, _BF16),
    # fp16 overflows inside Qwen's activations: frozen weights stay fp32 under fp16 compute.
    "16-mixed": Precision("16-mixed", _F16, _F32, _F32),
    # Everything in bf16 but the fp32 list; Lightning's own bf16-true would cast that list too
    # (module.to), so autocast over the stored dtypes runs it instead.
    "bf16-true": Precision("bf16-mixed", _BF16, _BF16, _BF16),
}

@dataclass(frozen=True)
class PrecisionPlan:
    precision: Precision
    keep: tuple[tuple[str, str], ...]  # (component prefix in LightBagel, a `keep_in_fp32` pattern)
    # The DiT's residual stream and output head in fp32 (`trainer.fp32_residual`), where its adapter
    # offers it (`fp32_residual` on the class); compute inside each block stays in the compute dtype.
    fp32_residual: bool = False

    def keeps(self, name: str) -> bool:
        return any(name.startswith(prefix) and re.search(p, name[len(prefix):]) for prefix, p in self.keep)

    def storage(self, name: str, trainable: bool) -> torch.dtype:
        if self.keeps(name):
            return torch.float32
        return self.precision.master if trainable else self.precision.frozen

    @property
    def mixed(self) -> bool:
        return self.precision.compute != torch.float32


def keep_patterns(model: nn.Module) -> tuple[tuple[str, str], ...]:
    """(prefix, pattern) of what each part of the fused model declares fp32 (`keep_in_fp32`)."""
    parts = {"und.": model.und, "gen.dit.": model.gen, "gen.vae.": model.gen.vae}
    return tuple((prefix, p) for prefix, part in parts.items() for p in part.keep_in_fp32)


def precision_of(tr: TrainerConfig) -> Precision:
    if tr.precision not in PRECISIONS:
        raise ValueError(f"trainer.precision {tr.precision!r} is unknown; allowed: {', '.join(PRECISIONS)}")
    return PRECISIONS[tr.precision]


def training_plan(tr: TrainerConfig, model: nn.Module) -> PrecisionPlan:
    precision = precision_of(tr)
    return PrecisionPlan(precision, keep_patterns(model), tr.fp32_residual and precision.compute != _F32)


def inference_plan(model: nn.Module, dtype: torch.dtype) -> PrecisionPlan:
    """One compute dtype for every weight but the fp32 list (no optimizer, no masters)."""
    return PrecisionPlan(Precision("32-true", dtype, dtype, dtype), keep_patterns(model))


class PrecisionError(LightBagelError, ValueError):
    """A precision the recipe must not train with, in one line."""


def refuse_bf16_masters(model: nn.Module, plan: PrecisionPlan, tr: TrainerConfig) -> None:
    trainable = any(p.requires_grad for p in model.parameters())
    if trainable and plan.precision.master != torch.float32 and not tr.allow_bf16_master_weights:
        raise PrecisionError(
            f"trainer.precision {tr.precision} would keep trainable weights and AdamW state in bf16, where "
            "most lr 3e-5 updates round away (docs/full_size.md); use bf16-mixed, or set "
            "trainer.allow_bf16_master_weights: true to accept that")


@torch.no_grad()
def apply_precision(model: nn.Module, plan: PrecisionPlan) -> nn.Module:
    """Casts every parameter to its planned dtype and every fp32-listed buffer to fp32, in place."""
    for name, param in model.named_parameters():
        dtype = plan.storage(name, param.requires_grad)
        if param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point() and plan.keeps(name):
            buffer.data = buffer.data.float()
    for module in model.modules():
        if hasattr(type(module), "fp32_residual"):  # an adapter that offers it (backbones/generation/wan.py)
            module.fp32_residual = module.fp32_head = plan.fp32_residual
    return model


def fp32_region(device: torch.device) -> AbstractContextManager:
    """Autocast off: what runs inside computes in the dtype of its (fp32-listed) weights. The meta
    device (lightbagel-plan) has no autocast to turn off."""
    if not torch.amp.is_autocast_available(device.type):
        return nullcontext()
    return torch.autocast(device.type, enabled=False)
