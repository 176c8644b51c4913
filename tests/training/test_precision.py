"""The precision plan (precision.py) under the GPU trainer card's settings, on the tiny model (CPU).

One AdamW step at lr 3e-5 through Lightning: with fp32 masters every entry an fp32 run moves also
moves; trainable weights and AdamW state are fp32, frozen weights bf16, and the fp32 list (rotary
frequencies, Wan's time path and modulation tables, the VAE and its latent statistics) stays fp32
with the exact values of an fp32 build, while fusion and DiT layers compute in bf16.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lightbagel.data.collate import Collator
from lightbagel.model import build_model
from lightbagel.precision import (
    PRECISIONS,
    PrecisionError,
    apply_precision,
    inference_plan,
    precision_of,
)
from lightbagel.recipe import load_recipe
from lightbagel.recipe.schema import CHOICES
from lightbagel.shapes.heldout import validation_samples
from lightbagel.training.module import LightBagelModule
from tests.training.loaders import ResumableLoader
from training.precision_probe import PrecisionProbe

ROOT = Path(__file__).resolve().parents[2]
# The GPU card's precision, on one CPU process, with the tiny Wan VAE (it has weights and statistics).
GPU_CARD = ["trainer=fsdp2_gpu", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto",
            "trainer.ema.enabled=false", "trainer.mlflow.enabled=false", "generation=tiny_wan2_1",
            "optim.lr=3.0e-5", "optim.warmup_steps=1"]
KEPT_BUFFERS = ("und.model.model.language_model.rotary_emb.inv_freq", "und.model.model.visual.rotary_pos_emb.inv_freq",
                "gen.dit.rope.freqs_cos", "gen.dit.rope.freqs_sin", "gen.vae.mean", "gen.vae.std")
KEPT_PARAMS = ("gen.dit.scale_shift_table", "gen.dit.blocks.0.scale_shift_table",
               "gen.dit.condition_embedder.time_embedder.linear_1.weight",
               "gen.dit.condition_embedder.time_proj.weight", "gen.vae.vae.encoder.conv_in.weight")


def recipe(*overrides: str):
    return load_recipe(ROOT / "recipes" / "tiny.yaml", [*GPU_CARD, *overrides]).config


def one_step(cfg) -> PrecisionProbe:
    module = LightBagelModule(cfg)
    batch = Collator(module.model.und.processor, 32)(validation_samples(4, 32, seed=7))
    probe = PrecisionProbe()
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision_of(cfg.trainer).lightning, max_steps=1,
                        gradient_clip_val=cfg.trainer.gradient_clip_val, callbacks=[probe], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module, train_dataloaders=ResumableLoader([batch]))
    return probe


@pytest.fixture(scope="module")
def runs():
    return {"fp32": one_step(recipe("trainer.precision=32-true")), "gpu": one_step(recipe()),
            "pure_bf16": one_step(recipe("trainer.precision=bf16-true", "trainer.allow_bf16_master_weights=true"))}


def changed(probe: PrecisionProbe) -> dict[str, torch.Tensor]:
    return {n: probe.final[n] != probe.initial[n] for n in probe.initial}


def test_the_gpu_card_trains_bf16_mixed():
    assert recipe().trainer.precision == "bf16-mixed"
    assert load_recipe(ROOT / "recipes" / "lightbagel_7b_5b.yaml").config.trainer.card == "fsdp2_gpu"


def test_one_step_at_lr_3e_5_moves_every_entry_an_fp32_step_moves(runs):
    fp32, gpu = changed(runs["fp32"]), changed(runs["gpu"])
    assert fp32.keys() == gpu.keys() and sum(int(m.sum()) for m in fp32.values()) > 10_000
    for name in fp32:
        assert not bool((fp32[name] & ~gpu[name]).any()), name


def test_pure_bf16_drops_most_of_those_updates(runs):
    # The failure mode the plan exists for: the same step with bf16 masters leaves most entries as they were.
    fp32, pure = changed(runs["fp32"]), changed(runs["pure_bf16"])
    moved = sum(int(m.sum()) for m in fp32.values())
    assert sum(int((fp32[n] & pure[n]).sum()) for n in fp32) < 0.5 * moved


def test_masters_and_adamw_state_fp32_frozen_bf16(runs):
    probe = runs["gpu"]
    assert probe.state_dtypes == {torch.float32}
    trainable = set(probe.trainable)
    assert all(probe.params[n] == torch.float32 for n in trainable)
    frozen = [n for n in probe.params if n not in trainable and not n.startswith("gen.vae.")]
    assert len(frozen) > 50 and all(probe.params[n] == torch.bfloat16 for n in frozen)


def test_the_fp32_list_is_fp32_with_the_values_of_an_fp32_build(runs):
    probe = runs["gpu"]
    reference = build_model(recipe("trainer.precision=32-true"))
    state = {**dict(reference.named_buffers()), **dict(reference.named_parameters())}
    for name in KEPT_BUFFERS:
        assert probe.buffers[name] == torch.float32, name
    for name in KEPT_PARAMS:
        assert probe.params[name] == torch.float32, name
    assert all(probe.params[n] == torch.float32 for n in probe.params if n.startswith("gen.vae."))
    module = LightBagelModule(recipe())
    module.configure_model()
    after = {**dict(module.model.named_buffers()), **dict(module.model.named_parameters())}
    for name in KEPT_BUFFERS + KEPT_PARAMS:
        assert torch.equal(after[name], state[name]), name  # never rounded through bf16


def test_pure_bf16_still_keeps_the_fp32_list_fp32(runs):
    """bf16-true reaches Lightning as autocast: its own bf16-true would `module.to(bf16)` the list."""
    probe = runs["pure_bf16"]
    assert probe.params["fusion.0.gen.to_q.weight"] == torch.bfloat16  # the rest is bf16
    for name in KEPT_BUFFERS:
        assert probe.buffers[name] == torch.float32, name
    for name in KEPT_PARAMS:
        assert probe.params[name] == torch.float32, name


def test_apply_precision_recasts_the_fp32_list_of_a_bf16_model():
    """A model cast whole to bf16 (an export read in bf16) gets its fp32 buffers and tables back."""
    cfg = recipe()
    model = build_model(cfg).to(torch.bfloat16)
    apply_precision(model, inference_plan(model, torch.bfloat16))
    buffers, params = dict(model.named_buffers()), dict(model.named_parameters())
    for name in KEPT_BUFFERS:
        assert buffers[name].dtype == torch.float32, name
    for name in KEPT_PARAMS:
        assert params[name].dtype == torch.float32, name
    assert params["fusion.0.gen.to_q.weight"].dtype == torch.bfloat16


def test_compute_runs_bf16_but_the_time_path_and_vae_fp32(runs):
    seen = runs["gpu"].seen
    assert seen["fusion.0.gen.to_q:output"] == seen["gen.dit.blocks.0.ffn:output"] == torch.bfloat16
    assert seen["gen.dit.condition_embedder.time_embedder:output"] == torch.float32
    assert seen["gen.dit.condition_embedder.time_proj:output"] == torch.float32
    assert seen["gen.vae.vae.encoder.conv_in:output"] == torch.float32


def test_sd3_keeps_its_timestep_embedder_fp32_and_trains_under_autocast():
    cfg = recipe("generation=tiny_sd3_pixel")
    module = LightBagelModule(cfg)
    module.configure_model()
    params = dict(module.model.named_parameters())
    assert params["gen.dit.transformer_blocks.0.attn.to_q.weight"].dtype == torch.float32  # a master
    assert params["gen.dit.context_embedder.weight"].dtype == torch.bfloat16  # text stream: frozen
    embedder = module.model.gen.dit.time_text_embed.timestep_embedder
    seen = []
    embedder.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    batch = Collator(module.model.und.processor, 32)(validation_samples(2, 32, seed=7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = module.flow_matching_loss(batch, [0, 1])
    loss.backward()
    assert torch.isfinite(loss) and params["gen.dit.proj_out.weight"].grad.dtype == torch.float32
    assert seen == [torch.float32]
    apply_precision(module.model, inference_plan(module.model, torch.bfloat16))  # every weight bf16 but the fp32 list
    assert embedder.linear_1.weight.dtype == torch.float32 and params["gen.dit.proj_out.weight"].dtype == torch.bfloat16


def test_bf16_true_is_refused_for_trainable_weights_unless_opted_in():
    with pytest.raises(PrecisionError, match="allow_bf16_master_weights") as err:
        LightBagelModule(recipe("trainer.precision=bf16-true"))
    assert "\n" not in str(err.value)
    module = LightBagelModule(recipe("trainer.precision=bf16-true", "trainer.allow_bf16_master_weights=true"))
    module.configure_model()
    params = dict(module.model.named_parameters())
    assert params["fusion.0.gen.to_q.weight"].dtype == torch.bfloat16
    assert params["gen.dit.blocks.0.scale_shift_table"].dtype == torch.float32


def test_lora_adapters_keep_fp32_masters_over_bf16_base_weights():
    module = LightBagelModule(recipe("trainer.lora.enabled=true"))
    module.configure_model()
    params = dict(module.model.named_parameters())
    lora = [n for n in params if ".lora_" in n]
    assert lora and all(params[n].dtype == torch.float32 and params[n].requires_grad for n in lora)
    assert params["fusion.0.gen.to_q.base_layer.weight"].dtype == torch.bfloat16


def test_fit_cli_refuses_bf16_true_in_one_line(capsys, tmp_path):
    from lightbagel.cli.fit import main

    small = [f"output_dir={tmp_path}", f"data.root={tmp_path}/data", "data.num_samples=8", "trainer.max_steps=1",
             "trainer.mlflow.enabled=false"]  # were the refusal gone, a short run instead of a long one
    assert main([str(ROOT / "recipes" / "tiny.yaml"), "trainer.precision=bf16-true", *small]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightbagel-fit: trainer.precision bf16-true") and "\n" not in err


def test_the_tables_agree_with_the_schema_and_the_registries():
    assert set(PRECISIONS) == set(CHOICES["trainer.precision"])


@pytest.mark.parametrize("fp32_residual", [True, False])
def test_the_dit_residual_stream_and_head_are_fp32_under_bf16_when_chosen(fp32_residual):
    """Wan2.2 keeps its residual stream and head in fp32; `trainer.fp32_residual` chooses it. What a
    DiT block hands the next and what the head returns are then fp32, the matmuls stay bf16."""
    module = LightBagelModule(recipe(f"trainer.fp32_residual={str(fp32_residual).lower()}"))
    module.configure_model()
    gen = module.model.gen
    assert gen.fp32_residual is gen.fp32_head is fp32_residual
    seen = {}
    gen.dit.blocks[0].ffn.register_forward_hook(lambda m, args, out: seen.setdefault("ffn", out.dtype) and None)
    block, head = gen.block, gen.head

    def record(name, run):
        def recorded(*args):
            out = run(*args)
            seen.setdefault(name, out.dtype)
            return out
        return recorded

    gen.block, gen.head = record("stream", block), record("head", head)
    batch = Collator(module.model.und.processor, 32)(validation_samples(2, 32, seed=7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        module.flow_matching_loss(batch, [0, 1])
    stream = torch.float32 if fp32_residual else torch.bfloat16
    assert seen["stream"] == seen["head"] == stream and seen["ffn"] == torch.bfloat16
