"""Faults of a real `lightbagel-fit` run: killed after a checkpoint, a corrupt newest checkpoint,
a full disk while saving. Each ends in a resume that equals the uninterrupted run, or one line."""

from __future__ import annotations

import errno
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import torch
from safetensors.torch import load_file

from lightbagel.cli.export import main as export_main
from lightbagel.cli.fit import main as fit_main
from lightbagel.training.checkpointing import complete_checkpoints, newest_loadable

TINY = Path(__file__).resolve().parents[2] / "recipes" / "tiny.yaml"
KILLED = Path(__file__).with_name("fit_killed.py")  # the real command, SIGKILLed after a checkpoint


def fit_args(out: Path, data: Path, steps: int = 6) -> list[str]:
    return [str(TINY), f"output_dir={out}", f"data.root={data}", "data.num_samples=48", "data.batch_size=4",
            f"trainer.max_steps={steps}", "trainer.checkpoint_every_n_steps=2", "trainer.keep_checkpoints=3",
            "trainer.mlflow.enabled=false", "trainer.enable_progress_bar=false", "trainer.sample_every_n_steps=0",
            "trainer.log_every_n_steps=1", "optim.warmup_steps=1"]


def first_loss(stdout: str) -> float:
    return float(re.search(r"loss (\S+) ->", stdout).group(1))


def same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "export" / "model.safetensors"), load_file(b / "export" / "model.safetensors")
    assert wa.keys() == wb.keys() and wa
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_killed_run_resumes_through_lightbagel_fit_past_a_corrupt_newest_checkpoint(tmp_path, capsys, caplog):
    data = tmp_path / "data"
    assert fit_main(fit_args(tmp_path / "ref", data)) == 0
    uninterrupted = first_loss(capsys.readouterr().out)

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(KILLED), "4", *fit_args(out, data)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpts = out / "checkpoints"
    assert [p.name for p in complete_checkpoints(ckpts)] == ["step-00000002.ckpt", "step-00000004.ckpt"]
    truncate(ckpts / "step-00000004.ckpt")  # the newest one is corrupt: fall back to step 2

    step_2 = (ckpts / "step-00000002.ckpt").stat().st_ino
    with caplog.at_level(logging.WARNING, logger="lightbagel.training.checkpointing"):
        assert fit_main(fit_args(out, data)) == 0
    warned = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warned) == 1 and "step-00000004.ckpt" in warned[0] and "\n" not in warned[0]
    resumed = first_loss(capsys.readouterr().out)
    assert resumed != uninterrupted  # its first step is step 3, not step 1: it did resume
    assert (ckpts / "step-00000002.ckpt").stat().st_ino == step_2  # ... from step 2, not rewritten
    same_weights(out, tmp_path / "ref")


def test_export_falls_back_past_a_corrupt_newest_checkpoint(tmp_path, capsys, caplog):
    out = tmp_path / "run"
    assert fit_main(fit_args(out, tmp_path / "data", steps=4)) == 0
    # A finished fit leaves none of its threads behind (one inside torch at exit aborts the process).
    assert not [t.name for t in threading.enumerate() if t.name in ("data-prefetch", "mlflow-metrics")]
    ckpts = out / "checkpoints"
    truncate(ckpts / "step-00000004.ckpt")
    assert newest_loadable(ckpts) == ckpts / "step-00000002.ckpt"
    with caplog.at_level(logging.WARNING, logger="lightbagel.training.checkpointing"):
        assert export_main([str(ckpts), str(tmp_path / "exported")]) == 0
    assert any("step-00000004.ckpt is unreadable" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "exported" / "model.safetensors").is_file()
    truncate(ckpts / "step-00000002.ckpt")
    assert export_main([str(ckpts), str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"no readable step-*.ckpt checkpoint in {ckpts}")


def test_disk_full_while_saving_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    import lightning.fabric.plugins.io.torch_io as torch_io

    real_save = torch_io._atomic_save

    def full_disk(checkpoint, filepath):  # writes part of the file, then the disk is full
        if "step-00000004" not in str(filepath):
            return real_save(checkpoint, filepath)
        Path(filepath).write_bytes(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filepath))

    monkeypatch.setattr(torch_io, "_atomic_save", full_disk)
    out = tmp_path / "run"
    assert fit_main(fit_args(out, tmp_path / "data")) == 2
    err = capsys.readouterr().err.strip()
    ckpts = out / "checkpoints"
    assert err == (f"lightbagel-fit: cannot write checkpoint {ckpts / 'step-00000004.ckpt'}: "
                   "No space left on device; removed the partial file; step-00000002.ckpt stays the resume point")
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000002.ckpt"]
    assert newest_loadable(ckpts) == ckpts / "step-00000002.ckpt"
