"""FSDP2 on CPU (gloo) under ModelParallelStrategy: world-size parity, resharded resume, kills.

Each run is a subprocess of run_tiny.py (6 steps of the tiny model, checkpoints every 2 steps, a
fixed batch per step: the model side alone, resharded on any rank count); the runs are shared by
the tests through one module-scoped fixture to keep the suite short. The real `lightbagel-fit`
with its data module on 2 ranks, killed and resumed, is tests/training/test_fit_distributed.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lightbagel.training.checkpointing import latest_checkpoint

SCRIPT = Path(__file__).with_name("run_tiny.py")


def launch(out: Path, *args: str, procs: int = 1, killed: bool = False) -> None:
    python = [sys.executable]
    if procs > 1:
        python += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*python, str(SCRIPT), "--out", str(out), *args], env=env, capture_output=True,
                          text=True, timeout=300)
    if killed:
        assert proc.returncode == -9, proc.stderr[-3000:]
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "weights.safetensors")


def losses(out: Path) -> list[float]:
    return json.loads((out / "losses.json").read_text())


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp2")
    launch(root / "one")  # 1 rank, global batch 4: the reference
    launch(root / "two", procs=2)  # 2 ranks x 2 samples
    return root


def test_two_ranks_follow_the_one_rank_loss_trajectory(runs):
    one, two = losses(runs / "one"), losses(runs / "two")
    assert len(one) == len(two) == 6
    assert one[-1] < one[0]  # it trains: the comparison is not between two flat lines
    assert two == pytest.approx(one, rel=1e-4, abs=1e-5)
    assert_same_weights(weights(runs / "one"), weights(runs / "two"), atol=1e-4)


@pytest.mark.parametrize("procs", [1, 2])
def test_two_rank_sharded_checkpoint_resumes_on_one_and_two_ranks(runs, procs):
    ckpt = runs / "two" / "checkpoints" / "step-00000002.ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    out = runs / f"resume_{procs}"
    launch(out, "--resume", str(ckpt), procs=procs)
    assert losses(out) == pytest.approx(losses(runs / "one")[2:], rel=1e-4, abs=1e-5)
    assert_same_weights(weights(out), weights(runs / "one"), atol=1e-4)


def test_kill_during_save_leaves_the_previous_checkpoint_loadable(runs):
    out = runs / "killed_saving"
    launch(out, "--kill-in-save", "4", killed=True)
    ckpts = out / "checkpoints"
    assert [p.name for p in ckpts.iterdir() if p.name.startswith(".tmp-")] == [".tmp-step-00000004.ckpt"]
    last = latest_checkpoint(ckpts)
    assert last is not None and last.name == "step-00000002.ckpt"
    launch(out, "--resume", str(last))
    assert_same_weights(weights(out), weights(runs / "one"), atol=0)
    assert not any(p.name.startswith(".tmp-") for p in ckpts.iterdir())  # the next save cleaned up


def test_export_of_a_two_rank_checkpoint_loads_the_trained_weights(runs, tmp_path):
    from lightbagel.cli.export import main
    from lightbagel.model_folder import load_exported

    assert main([str(runs / "two" / "checkpoints"), str(tmp_path)]) == 0  # the newest: step 6
    model = load_exported(tmp_path)
    state = model.state_dict()
    assert_same_weights({k: state[k] for k in weights(runs / "two")}, weights(runs / "two"), atol=0)


# The GPU trainer card's precision (bf16-mixed) under 2-rank FSDP2, against a 1-rank fp32 step;
# one step at lr 3e-5 from the same weights (test_precision.py has the single-process checks).
PRECISION = ["trainer=fsdp2_gpu", "generation=tiny_wan2_1", "optim.lr=3.0e-5", "optim.warmup_steps=1"]


@pytest.fixture(scope="module")
def precision_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp2_precision")
    launch(root / "fp32", "--steps", "1", "--report", *PRECISION, "trainer.precision=32-true")
    launch(root / "mixed", "--steps", "1", "--report", *PRECISION, procs=2)
    launch(root / "pure", "--steps", "1", "--report", *PRECISION, "trainer.precision=bf16-true",
           "trainer.allow_bf16_master_weights=true", procs=2)
    return root


def moved(out: Path) -> dict[str, torch.Tensor]:
    initial = load_file(out / "initial.safetensors")
    return {n: w != initial[n] for n, w in weights(out).items()}


def test_two_rank_bf16_mixed_step_moves_the_entries_an_fp32_step_moves(precision_runs):
    fp32, mixed = moved(precision_runs / "fp32"), moved(precision_runs / "mixed")
    assert fp32.keys() == mixed.keys() and sum(int(m.sum()) for m in fp32.values()) > 10_000
    both = {name: int((fp32[name] & mixed[name]).sum()) for name in fp32}
    # Not every entry: each rank's gradient is a bf16 compute result, and where the two nearly
    # cancel their sum can be exactly 0 (about 0.1% of entries here; one rank moves them all).
    assert sum(both.values()) >= 0.995 * sum(int(m.sum()) for m in fp32.values())
    assert all(both[name] >= 0.9 * int(fp32[name].sum()) for name in fp32)


def test_two_rank_fsdp2_keeps_masters_state_and_the_fp32_list_fp32(precision_runs):
    from training.test_precision import KEPT_BUFFERS, KEPT_PARAMS

    report = json.loads((precision_runs / "mixed" / "precision.json").read_text())
    params, trainable = report["params"], set(report["trainable"])
    assert report["state_dtypes"] == ["float32"]
    assert all(params[n] == "float32" for n in trainable)
    frozen = [n for n in params if n not in trainable and not n.startswith("gen.vae.")]
    assert len(frozen) > 50 and all(params[n] == "bfloat16" for n in frozen)
    assert all(report["buffers"][n] == "float32" for n in KEPT_BUFFERS)
    assert all(params[n] == "float32" for n in KEPT_PARAMS)
    # What the forward computes with: FSDP2's bf16 compute copies for fusion and a Wan block's
    # layers; fp32 for the time path and the block's modulation table (their groups gather fp32).
    seen = report["seen"]
    assert seen["fusion.0.gen.to_q.weight"] == seen["gen.dit.blocks.0.ffn.net.2.weight"] == "bfloat16"
    assert seen["gen.dit.condition_embedder.time_embedder.linear_1.weight"] == "float32"
    assert seen["gen.dit.blocks.0.scale_shift_table"] == "float32"
    assert seen["gen.dit.condition_embedder.time_embedder:output"] == "float32"
    assert seen["gen.vae.vae.encoder.conv_in:output"] == "float32"


def test_two_rank_opted_in_bf16_true_trains_with_bf16_masters_beside_the_fp32_list(precision_runs):
    report = json.loads((precision_runs / "pure" / "precision.json").read_text())
    params = report["params"]
    assert params["fusion.0.gen.to_q.weight"] == params["gen.dit.blocks.0.ffn.net.2.weight"] == "bfloat16"
    assert params["gen.dit.blocks.0.scale_shift_table"] == params["gen.dit.scale_shift_table"] == "float32"
    assert "bfloat16" in report["state_dtypes"]
    fp32, pure = moved(precision_runs / "fp32"), moved(precision_runs / "pure")
    assert sum(int((fp32[n] & pure[n]).sum()) for n in fp32) < 0.5 * sum(int(m.sum()) for m in fp32.values())


# Rank 0: three 32 px samples; rank 1: one 64 px sample (4x the tokens of one 32 px sample).
UNEVEN = [(3, 32), (1, 64)]



def test_two_ranks_with_different_token_counts_give_the_union_gradients(tmp_path):
    """FSDP2 averages gradients over ranks; each rank's loss is weighted by its share of the global
    tokens, so rank 1's one large sample weighs what it would in one process, not half the batch."""
    out = tmp_path / "uneven"
    launch(out, "--steps", "1", "--grads", "--uneven", ",".join(f"{n}x{s}" for n, s in UNEVEN),
           "trainer.gradient_clip_val=null", procs=2)
    launch(tmp_path / "union", "--union", ",".join(f"{n}x{s}" for n, s in UNEVEN), "trainer.gradient_clip_val=null")
    sharded, union = load_file(out / "grads.safetensors"), load_file(tmp_path / "union" / "grads.safetensors")
    assert union.keys() == sharded.keys() and len(union) > 50
    for name in union:
        # fp32 on both sides; the reduction order differs (two partial sums against one).
        torch.testing.assert_close(sharded[name], union[name], rtol=1e-4, atol=1e-6, msg=name)


def test_fusion_blocks_get_fp32_rotary_and_one_mask_build_per_forward_under_fsdp2(precision_runs):
    """FSDP2 hands each group its inputs as they are: Wan's fp32 cos/sin reach every fusion block in
    fp32 (a bf16 group would cast them) and the masks are built as often as in one process. (The
    VLM's cos/sin are in its hidden dtype, as HF's Qwen2.5-VL rotary returns them.)"""
    one = json.loads((precision_runs / "fp32" / "precision.json").read_text())
    mixed = json.loads((precision_runs / "mixed" / "precision.json").read_text())
    gen = {name: dtypes for name, dtypes in mixed["rope"].items() if name.endswith(".gen")}
    assert len(gen) >= 2 and all(dtypes == ["float32"] for dtypes in gen.values()), gen
    assert 0 < mixed["mask_builds"] == one["mask_builds"]
