"""LoRA adapters through peft: targets per component, peft-format save/load, merge into the base.

Targets are module-name suffixes per component (`trainer.lora.targets`), e.g. `fusion:
[to_q, to_k, to_v, to_out]` or `generation: [attn1.to_q, attn1.to_out.0]`; they become one peft
regex over the fused model's module names. Injection freezes every other weight.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file
from torch import nn

from lightbagel.recipe.schema import LoraConfig

# Where each component lives inside LightBagel.
COMPONENT_PREFIX = {"understanding": "und", "generation": "gen.dit", "fusion": "fusion"}
ADAPTER = "default"
WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"
PEFT_PREFIX = "base_model.model."  # how PeftModel names saved adapter weights


def target_regex(targets: dict[str, list[str]]) -> str:
    parts = []
    for component, suffixes in targets.items():
        if component not in COMPONENT_PREFIX:
            raise ValueError(f"trainer.lora.targets: unknown component {component!r}; "
                             f"allowed: {', '.join(COMPONENT_PREFIX)}")
        if suffixes:
            names = "|".join(re.escape(s) for s in suffixes)
            parts.append(rf"{re.escape(COMPONENT_PREFIX[component])}\.(?:.*\.)?(?:{names})")
    if not parts:
        raise ValueError("trainer.lora.targets names no module; e.g. {fusion: [to_q, to_k, to_v, to_out]}")
    return "|".join(f"(?:{p})" for p in parts)


def peft_config(cfg: LoraConfig) -> PeftLoraConfig:
    return PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=target_regex(dict(cfg.targets)), bias="none")


def add_lora(model: nn.Module, cfg: LoraConfig | PeftLoraConfig) -> nn.Module:
    """Injects LoRA layers in place; only they stay trainable."""
    config = cfg if isinstance(cfg, PeftLoraConfig) else peft_config(cfg)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    object.__setattr__(model, "lora_config", config)  # plain attribute: not a submodule
    return model


def lora_layers(model: nn.Module) -> list[tuple[str, BaseTunerLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """LoRA weights under peft's saved names (`base_model.model.<module>.lora_A.weight`)."""
    state = {}
    for name, tensor in model.state_dict().items():
        if ".lora_" in name:
            state[PEFT_PREFIX + name.replace(f".{ADAPTER}.", ".")] = tensor.detach().contiguous()
    return state


def save_adapters(model: nn.Module, out_dir: Path | str) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state(model), out_dir / WEIGHTS, metadata={"format": "pt"})
    config = model.lora_config.to_dict()
    config["target_modules"] = model.lora_config.target_modules
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    (out_dir / CONFIG).write_text(json.dumps(config, indent=2, default=str))
    return out_dir


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Folds every LoRA layer into its base weight and puts the base layer back."""
    for name, layer in lora_layers(model):
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    if hasattr(model, "lora_config"):
        object.__delattr__(model, "lora_config")
    return model
