"""`lightbagel-plan`: FLOP formula against counted FLOPs, measured activations, FSDP sharding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lightbagel.cli.plan import main as plan_main
from lightbagel.model import build_model, build_skeleton
from lightbagel.planning import make_plan
from lightbagel.planning.activations import measure_sample
from lightbagel.planning.flops import _weights
from lightbagel.planning.parts import model_parts
from lightbagel.planning.workload import make_workload, sample_inputs

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture(scope="module")
def tiny_cpu_model(tiny_recipe):
    return build_model(tiny_recipe.config).eval()


@pytest.mark.parametrize("kind", ["t2i", "edit"])
def test_weight_flops_match_the_counted_matmuls(tiny_cpu_model, kind):
    """2 x active weights x tokens per part equals what the real forward multiplies (the tiny
    model's norms and biases, counted as weights, make up the few percent)."""
    model = tiny_cpu_model
    workload = make_workload(model, 512, 32, 32, text_tokens=7, edit_fraction=0.5)
    shape = getattr(workload, kind)
    und, gen = sample_inputs(model, shape, 32, device="cpu", dtype=torch.float32)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(und, gen)
    estimate = sum(_weights(shape, model, {p.name: p for p in model_parts(model)}).values())
    assert estimate == pytest.approx(counter.get_total_flops(), rel=0.05)


def test_activations_are_measured_per_token_and_checkpointing_cuts_them(tiny_recipe):
    model = build_skeleton(tiny_recipe.config)
    workload = make_workload(model, 512, 32, 32, text_tokens=7, edit_fraction=0.5)
    small = measure_sample(model, workload.t2i, 32, torch.float32)
    longer = measure_sample(model, type(workload.t2i)("t2i", 14, 0, 0, 1, workload.t2i.gen_per_slot), 32, torch.float32)
    assert "block" not in vars(model.gen)  # the measuring wrapper is gone again
    assert 0 < small.checkpointed < small.total < longer.total
    gen_tokens = model.gen.tokens_per_slot(8, 8)  # a 32 px image: 8 x 8 latents
    assert small.boundary == (7 * model.und.hidden_size + gen_tokens * model.gen.hidden_size) * 4


def test_states_shard_over_every_gpu_and_activations_do_not(tiny_recipe):
    one = make_plan(tiny_recipe.config, gpus=1, nodes=1, seq_len=512, progress=False)
    many = make_plan(tiny_recipe.config, gpus=4, nodes=2, seq_len=512, progress=False)
    total = sum(p.total for p in one.parts)
    trainable = sum(p.trainable for p in one.parts)
    assert one.memory.weights == total * 4  # 32-true: fp32 weights
    assert one.memory.optimizer == trainable * 8  # two fp32 AdamW moments
    assert many.memory.weights == pytest.approx(one.memory.weights / 8)
    assert many.memory.activations == one.memory.activations
    assert one.flops and all(r.with_checkpointing >= r.model for r in one.flops)


def test_planned_weight_bytes_are_what_training_stores_per_dtype():
    """bf16-mixed: frozen weights bf16, trainable masters and the fp32 list (the tiny Wan VAE,
    whole on every rank) fp32; the plan counts what the set-up module really holds."""
    from lightbagel.recipe import load_recipe
    from lightbagel.training.module import LightBagelModule

    cfg = load_recipe(RECIPES / "tiny.yaml", ["trainer.precision=bf16-mixed", "generation=tiny_wan2_1"]).config
    module = LightBagelModule(cfg)
    module.configure_model()
    params = list(module.model.parameters())
    stored = sum(p.numel() * p.element_size() for p in params)
    vae = sum(p.numel() * p.element_size() for p in module.model.gen.vae.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    assert {p.dtype for p in params} == {torch.float32, torch.bfloat16} and vae > 0
    one = make_plan(cfg, gpus=1, nodes=1, seq_len=512, progress=False)
    four = make_plan(cfg, gpus=4, nodes=1, seq_len=512, progress=False)
    assert one.memory.weights == stored
    assert four.memory.weights == pytest.approx((stored - vae) / 4 + vae)
    assert one.memory.optimizer == 2 * 4 * trainable and one.memory.gradients == 4 * trainable


def test_plan_cli_full_size(capsys):
    assert plan_main([str(RECIPES / "lightbagel_7b_5b.yaml"), "--gpus", "8", "--nodes", "4"]) == 0
    out = capsys.readouterr().out
    params = out.split("\n\n")[1]  # the first table: parameters per part
    rows = {line.split()[0]: line.split() for line in params.splitlines()}
    assert rows["fusion"][1] == "2,863,672,320"  # the paper's "+3B"
    assert rows["DiT"][1] == "4,999,787,712"
    assert rows["VLM"][2] == "7,615,616,512" and rows["ViT"][1] == "676,550,144"  # 8.29 B together
    assert "FSDP2 over 32 GPUs (4 x 8)" in out


def test_plan_cli_rejects_bad_input(capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses it, in one line
        plan_main([str(RECIPES / "tiny.yaml"), "--seq-len", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--seq-len" in err and len(err.strip().splitlines()) == 1
    assert plan_main([str(RECIPES / "no_such_recipe.yaml")]) == 2
    assert "recipe not found" in capsys.readouterr().err


def test_plan_counts_real_and_padded_tokens_of_the_data_pipeline(tmp_path):
    """`--data-sample`: the recipe's own batches, counted as each layout computes them."""
    import itertools

    from lightbagel.data.datamodule import MixtureDataModule
    from lightbagel.planning import format_plan
    from lightbagel.recipe import load_recipe

    recipe = load_recipe(RECIPES / "tiny.yaml", [f"data.root={tmp_path}", "data.num_samples=64"]).config
    plan = make_plan(recipe, gpus=1, nodes=1, seq_len=512, progress=False, data_sample=3)
    dm = MixtureDataModule(recipe.data, build_skeleton(recipe).und.processor, vae_multiple=4)
    dm.setup("fit")
    batches = list(itertools.islice(iter(dm.train_dataloader()), 3))
    per_slot = 8 * 8  # 32 px images, 4 px per DiT token
    real = sum(int(b.und.attention_mask.sum()) + per_slot * (len(b) + int(b.has_source.sum())) for b in batches)
    padded = sum(b.und.attention_mask.numel() + per_slot * len(b) * (1 + int(b.has_source.any())) for b in batches)
    sample = plan.packing
    assert (sample.batches, sample.samples, sample.real, sample.padded) == (3, sum(map(len, batches)), real, padded)
    assert sample.padded_fraction < 0.9 and 0.5 < sample.budget_fill <= 1.0
    assert f"padded rows {sample.padded_fraction:.1%}" in format_plan(plan)


def test_the_gather_term_is_the_root_group_and_two_blocks():
    """FSDP2 gathers a block at a time with the next prefetched, and keeps its root group (all that
    no block holds: embeddings, LM head, ViT, DiT embedders and head) gathered through the step;
    the groups are those training/sharding.py makes, each weight at the dtype the forward sees."""
    from lightbagel.model import build_skeleton
    from lightbagel.precision import apply_precision, inference_plan
    from lightbagel.recipe import load_recipe
    from lightbagel.training.sharding import model_units

    cfg = load_recipe(RECIPES / "tiny.yaml", ["trainer.precision=bf16-mixed", "generation=tiny_wan2_1"]).config
    model = build_skeleton(cfg)
    apply_precision(model, inference_plan(model, torch.bfloat16))
    units = model_units(model)
    names = {id(m): n for n, m in model.named_modules()}
    blocks = [names[id(m)] + "." for unit in units for m in unit.modules]
    size = lambda named: sum(p.numel() * p.element_size() for _, p in named)  # noqa: E731
    params = list(model.named_parameters())
    per_block = [size((n, p) for n, p in params if n.startswith(b)) for b in blocks]
    root = [(n, p) for n, p in params if not n.startswith((*blocks, "gen.vae."))]
    root_names = {n.rsplit(".", 1)[0] for n, _ in root}
    assert any("embed_tokens" in n for n in root_names) and any("lm_head" in n for n in root_names)
    assert any(".visual." in n for n in root_names)
    plan = make_plan(cfg, gpus=2, nodes=1, seq_len=512, progress=False)
    assert plan.memory.gather == 2 * max(per_block) + size(root)


def test_plan_prints_flops_against_the_ideal_and_the_cost_of_und_writeback():
    """The paper's recipe (frozen VLM, und_writeback true): the VLM's input gradients and the
    recompute are the overhead; flipped to false the VLM runs forward only, so without
    checkpointing the step computes exactly the ideal."""
    from lightbagel.planning import format_plan
    from lightbagel.planning.report import ideal_flops
    from lightbagel.recipe import load_recipe

    plan = make_plan(load_recipe(RECIPES / "lightbagel_7b_5b.yaml").config, gpus=8, nodes=1, seq_len=16384,
                     progress=False)
    flipped, other = plan.writeback
    assert flipped is False
    ideal = ideal_flops(plan, plan.flops)
    assert ideal_flops(plan, other) < ideal  # the und-side fusion projections are gone too
    assert sum(r.model for r in other) == ideal_flops(plan, other)
    assert sum(r.model for r in plan.flops) > 1.1 * ideal
    text = format_plan(plan)
    assert "fusion.und_writeback true (this recipe)" in text and "; false: " in text
    assert f"{sum(r.with_checkpointing for r in plan.flops) / ideal:.2f}x with it" in text
