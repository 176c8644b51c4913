"""The paper's full model (Qwen2.5-VL-7B + Wan2.2-TI2V-5B + 30 fusion blocks) built on the meta
device from the configs the cards ship: no download, no memory, seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightbagel.data.collate import Collator
from lightbagel.inputs import gen_inputs
from lightbagel.model import build_skeleton
from lightbagel.planning.parts import fusion_split, model_parts
from lightbagel.precision import apply_precision, inference_plan
from lightbagel.recipe import load_recipe
from lightbagel.shapes.heldout import validation_samples

FULL = Path(__file__).resolve().parents[2] / "recipes" / "lightbagel_7b_5b.yaml"


@pytest.fixture(scope="module")
def full_recipe():
    return load_recipe(FULL).config


@pytest.fixture(scope="module")
def full_model(full_recipe):
    # Weights as the bf16 forward sees them (compute copies; the fp32 list in fp32), as lightbagel-plan does.
    model = build_skeleton(full_recipe)
    return apply_precision(model, inference_plan(model, torch.bfloat16))


def test_recipe_holds_the_paper_settings(full_recipe):
    r = full_recipe
    assert r.understanding.pretrained == "Qwen/Qwen2.5-VL-7B-Instruct" and r.understanding.freeze
    assert r.generation.pretrained == "Wan-AI/Wan2.2-TI2V-5B-Diffusers" and r.generation.subfolder == "transformer"
    assert (r.generation.vae.adapter, r.generation.vae.subfolder, r.generation.vae.freeze) == ("wan_vae", "vae", True)
    assert not r.generation.freeze and r.generation.cross_attention == "skip"
    assert (r.optim.lr, r.optim.warmup_steps, r.trainer.max_steps) == (3e-5, 2000, 70000)
    o = r.objective
    assert (o.timestep_shift, o.text_dropout, o.vae_dropout, o.vit_dropout) == (4.0, 0.1, 0.1, 0.5)
    assert r.trainer.precision == "bf16-mixed" and r.fusion.depth_offset == 0.0
    assert [s.start_step for s in r.data.stages] == [0, 30000, 55000]  # the 3-stage mixture


def test_full_model_builds_on_meta_with_the_real_shapes(full_model):
    m = full_model
    assert all(p.device.type == "meta" for p in m.parameters())
    assert (m.und.num_layers, m.und.hidden_size, m.und.num_heads, m.und.head_dim) == (28, 3584, 28, 128)
    assert (m.gen.num_layers, m.gen.hidden_size, m.gen.num_heads, m.gen.head_dim) == (30, 3072, 24, 128)
    assert (m.gen.vae.latent_channels, m.gen.vae.spatial_factor, m.gen.patch_size) == (48, 16, (1, 2, 2))
    assert len(m.fusion) == 30 and m.schedule[-3:] == [28, 28, 28]
    parts = {p.name: p for p in model_parts(m)}
    assert parts["VLM LLM"].total + parts["ViT"].total == 8_292_166_656  # Qwen2.5-VL-7B-Instruct
    assert parts["DiT"].total == 4_999_787_712  # Wan2.2-TI2V-5B transformer
    und, gen = fusion_split(m)
    # Per block: und side 4 x (3584 x 3584 + 3584) + RMS norm 3584 + QK norms 2 x 128;
    # gen side 3 x (3072 x 3584 + 3584) + (3584 x 3072 + 3072) + norm 3072 + QK norms 2 x 128.
    assert und == 30 * (4 * (3584 * 3584 + 3584) + 3584 + 256)
    assert gen == 30 * (3 * (3072 * 3584 + 3584) + 3584 * 3072 + 3072 + 3072 + 256)
    assert parts["fusion"].total == und + gen == 2_863_672_320
    assert parts["fusion"].trainable == parts["fusion"].total and parts["VLM LLM"].trainable == 0


def test_fused_forward_shapes_for_t2i_and_edit(full_model):
    """Index tensors stay on the host (the VLM's M-RoPE index needs their values); weights,
    activations and the VAE run on meta."""
    m = full_model
    batch = Collator(m.und.processor, 224)(validation_samples(2, 512))  # a T2I and an edit sample
    assert batch.has_source.tolist() == [False, True]
    with torch.no_grad():
        x0 = m.gen.vae.encode(batch.target.to("meta", torch.bfloat16))
        assert x0.shape == (2, 48, 32, 32)
        zeros = torch.zeros(x0.shape, dtype=torch.bfloat16)
        gen = gen_inputs(zeros, torch.full((2,), 0.5), zeros, batch.has_source, batch.source_order)
        # the edit's source is a clean VAE slot at t = 0 next to the noisy target: per-token timesteps
        assert gen.timesteps[1].tolist() == [0.0, 0.5] and gen.valid.tolist() == [[False, True], [True, True]]
        out = m(batch.und, gen.to("meta"))
    assert out.und_hidden.shape == (*batch.und.input_ids.shape, 3584) and out.und_hidden.device.type == "meta"
    # two VAE slots (clean source at t = 0, noisy target), 16 x 16 tokens each, 2 x 2 x 48 per token
    assert out.velocity.shape == (2, 2 * 256, 192)
    assert int((batch.und.segment[1] == 2).sum()) == 64 + 2  # 224 px source: 8 x 8 ViT tokens + frame
