"""The real `lightbagel-fit` (training/fit.py and the MixtureDataModule) on 2 CPU ranks under FSDP2:
uninterrupted, killed after a checkpoint and rerun, and resumed on another rank count.

The runs are subprocesses of `torch.distributed.run`, shared by the tests through one fixture.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lightbagel.cli.fit import main as fit_main

TINY = Path(__file__).resolve().parents[2] / "recipes" / "tiny.yaml"
KILLED = Path(__file__).with_name("fit_killed.py")


def args(out: Path, data: Path, ranks: int = 2) -> list[str]:
    return [str(TINY), f"output_dir={out}", f"data.root={data}", "data.num_samples=48", "data.batch_size=2",
            f"trainer.devices={ranks}", "trainer.strategy=fsdp2", "trainer.max_steps=4",
            "trainer.checkpoint_every_n_steps=2", "trainer.mlflow.enabled=false", "trainer.enable_progress_bar=false",
            "trainer.sample_every_n_steps=0", "trainer.log_every_n_steps=1", "optim.warmup_steps=1"]


def launch(*argv: str, ranks: int = 2) -> subprocess.CompletedProcess:
    """`lightbagel-fit` (or the killed variant) on `ranks` processes."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    target = [str(KILLED), *argv[:1]] if argv[0].isdigit() else ["-m", "lightbagel.cli.fit"]
    rest = argv[1:] if argv[0].isdigit() else argv
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([*command, *target, *rest], env=env, capture_output=True, text=True, timeout=600)


def export(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "export" / "model.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """`whole`: 4 steps on 2 ranks, uninterrupted."""
    root = tmp_path_factory.mktemp("fit2")
    done = launch(*args(root / "whole", root / "data"))
    assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def killed(runs) -> Path:
    """The same run SIGKILLed after its step-2 checkpoint, then the same command again."""
    out = runs / "killed"
    killed = launch("2", *args(out, runs / "data"))
    assert killed.returncode != 0 and not (out / "export").exists(), killed.stderr[-3000:]
    step_2 = out / "checkpoints" / "step-00000002.ckpt" / "meta.pt"
    (runs / "step_2_inode").write_text(str(step_2.stat().st_ino))
    resumed = launch(*args(out, runs / "data"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return out


def test_two_ranks_write_sharded_checkpoints_and_an_export(runs):
    ckpt = runs / "whole" / "checkpoints" / "step-00000004.ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    assert export(runs / "whole")


def test_killed_two_rank_run_resumes_to_the_uninterrupted_weights(runs, killed):
    """Rerunning the same command resumes both ranks' model, optimizer and data streams exactly."""
    whole, resumed = export(runs / "whole"), export(killed)
    assert whole.keys() == resumed.keys()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)
    # It resumed from step 2 (left as it was), rather than training again from step 0.
    step_2 = killed / "checkpoints" / "step-00000002.ckpt" / "meta.pt"
    assert str(step_2.stat().st_ino) == (runs / "step_2_inode").read_text()


def test_resuming_on_another_rank_count_is_one_line(runs, tmp_path, capsys):
    """Each rank's data stream position is its own: one rank cannot continue two ranks' streams."""
    out = tmp_path / "one"
    shutil.copytree(runs / "whole" / "checkpoints", out / "checkpoints")
    one = args(out, runs / "data", ranks=1)
    # A subprocess: an in-process FSDP2 run would leave this process's MASTER_PORT and store behind.
    refused = launch(*one, ranks=1)
    assert refused.returncode != 0
    lines = [line for line in refused.stderr.splitlines() if line.startswith("lightbagel-fit:")]
    assert lines == ["lightbagel-fit: cannot resume the data stream: the checkpoint was written by 2 rank(s), this "
                     "run has 1; resume with the same trainer.devices x num_nodes"], refused.stderr[-3000:]
    # A sharded checkpoint needs the strategy that wrote it: one line too, before anything is built.
    assert fit_main([*one, "trainer.strategy=auto"]) == 2
    assert "was written sharded, by trainer.strategy=fsdp2" in capsys.readouterr().err
