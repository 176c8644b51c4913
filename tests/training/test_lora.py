"""LoRA through peft: trainable count, peft-format round trip, merge equals base + adapter."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from torch import nn

from lightbagel.inputs import gen_inputs
from lightbagel.model import build_model
from lightbagel.model_folder import read_weights
from lightbagel.recipe.schema import LoraConfig
from lightbagel.training.lora import (
    ADAPTER,
    PEFT_PREFIX,
    WEIGHTS,
    add_lora,
    lora_layers,
    merge_lora,
    save_adapters,
    target_regex,
)

REPO = Path(__file__).resolve().parents[2]  # recipes are found from here, whatever the working directory
CFG = LoraConfig(enabled=True, rank=4, alpha=8.0, targets={
    "fusion": ["to_q", "to_k", "to_v", "to_out"],
    "generation": ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0"],
    "understanding": ["self_attn.q_proj", "self_attn.v_proj"],
})


def expected_trainable(model: nn.Module, cfg: LoraConfig) -> int:
    """r x (in + out) per targeted linear layer of a model without adapters."""
    pattern = re.compile(target_regex(dict(cfg.targets)))
    return sum(cfg.rank * (m.in_features + m.out_features)
               for n, m in model.named_modules() if isinstance(m, nn.Linear) and pattern.fullmatch(n))


def load_adapters(model: nn.Module, adapter_dir: Path | str) -> nn.Module:
    """Injects the saved adapters' LoRA layers into a base model and loads their weights."""
    adapter_dir = Path(adapter_dir)
    add_lora(model, PeftLoraConfig.from_pretrained(str(adapter_dir)))
    saved = read_weights(adapter_dir / WEIGHTS)  # one line when missing, truncated or not safetensors
    state = {}
    for name, tensor in saved.items():
        module, _, kind = name.removeprefix(PEFT_PREFIX).rpartition(".lora_")
        lora, _, param = kind.partition(".")
        state[f"{module}.lora_{lora}.{ADAPTER}.{param}"] = tensor
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise KeyError(f"{adapter_dir / WEIGHTS} holds adapters this model lacks: {result.unexpected_keys[:3]}")
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if missing:
        raise KeyError(f"{adapter_dir / WEIGHTS} lacks adapter weights: {missing[:3]}")
    return model


def _trained_adapters(model, seed: int = 0):
    """Fresh LoRA B matrices are zero (adapter = identity): give them values, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _outputs(model, batch) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    gen = gen_inputs(torch.randn(len(batch), 48, 8, 8, generator=g), torch.full((len(batch),), 0.5))
    with torch.no_grad():
        return model(batch.und, gen).velocity


@pytest.fixture
def lora_model(tiny_recipe):
    return add_lora(build_model(tiny_recipe.config).eval(), CFG)


def test_trainable_parameters_are_exactly_the_adapters(tiny_recipe, lora_model):
    expected = expected_trainable(build_model(tiny_recipe.config), CFG)
    trainable = {n: p.numel() for n, p in lora_model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == expected > 0
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # fusion: 3 blocks x (und q/k/v/out + gen q/k/v/out); DiT: 3 x 4; VLM: 2 layers x 2
    assert len(lora_layers(lora_model)) == 3 * 8 + 3 * 4 + 2 * 2


def test_unknown_component_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown component 'vae'"):
        target_regex({"vae": ["conv"]})


def test_adapter_save_load_round_trip(tiny_recipe, lora_model, make_batch, tmp_path):
    _trained_adapters(lora_model)
    batch = make_batch(lora_model)
    save_adapters(lora_model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA"
    loaded = load_adapters(build_model(tiny_recipe.config).eval(), tmp_path)
    torch.testing.assert_close(_outputs(loaded, batch), _outputs(lora_model, batch), rtol=0, atol=0)


def test_merged_model_equals_base_plus_adapter(tiny_recipe, lora_model, make_batch):
    _trained_adapters(lora_model)
    batch = make_batch(lora_model)
    with_adapter = _outputs(lora_model, batch)
    base = _outputs(build_model(tiny_recipe.config).eval(), batch)
    assert not torch.allclose(with_adapter, base, atol=1e-3)  # the adapters do change the output
    merged = merge_lora(lora_model)
    assert not lora_layers(merged) and not any(".lora_" in n for n in merged.state_dict())
    torch.testing.assert_close(_outputs(merged, batch), with_adapter, rtol=1e-4, atol=1e-5)


def test_lora_edit_recipe_fine_tunes_a_tiny_export(tmp_path, make_batch):
    """recipes/lora_edit.yaml at tiny size: init from an export, adapters only, on CPU."""
    from lightbagel.model_folder import export_model
    from lightbagel.recipe import load_recipe
    from lightbagel.training.module import LightBagelModule

    tiny = ["understanding=tiny_qwen2_5_vl", "generation=tiny_wan_pixel", "trainer.card=cpu",
            "trainer.lora.enabled=true", "trainer.lora.rank=2", "data.card=shapes", f"output_dir={tmp_path}"]
    trained = load_recipe(REPO / "recipes" / "tiny.yaml").config
    base = build_model(trained)
    with torch.no_grad():
        base.fusion[0].gen.to_out.weight.fill_(0.01)  # a "trained" fusion block
    export_model(base, trained, "", tmp_path / "export")
    recipe = load_recipe(REPO / "recipes" / "lora_edit.yaml", [*tiny, f"init_from={tmp_path / 'export'}"]).config
    assert recipe.trainer.lora.rank == 2 and recipe.trainer.strategy == "auto"
    module = LightBagelModule(recipe)
    weight = module.model.fusion[0].gen.to_out.base_layer.weight
    assert torch.all(weight == 0.01) and not weight.requires_grad
    loss, _ = module.flow_matching_loss(make_batch(module.model), seeds=[1, 2, 3, 4])
    loss.backward()
    gen_side = [p for n, p in module.model.named_parameters() if "lora_B" in n and (".gen." in n or "dit" in n)]
    assert gen_side and all(p.grad is not None for p in gen_side)
