"""What a run keeps: versioned exports with `export` naming the newest, files as readable as
checkpoints, a checkpoint on SIGTERM, no lock file left behind, a quiet console."""

from __future__ import annotations

import io
import logging
import os

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn

from lightbagel.model_folder import atomic_write, export_info, point_export, run_folder, version_dir, write_info
from lightbagel.runs.folder import LOCK, RunError, folder_lock
from lightbagel.training.checkpointing import AtomicCheckpoint, complete_checkpoints
from lightbagel.training.console import PlainProgress, StepBar, silence_noise


def _version(out, step: int):
    folder = version_dir(out, step)
    atomic_write(folder / "model.safetensors", lambda tmp: open(tmp, "w").write(f"weights of step {step}"))
    write_info(folder, step=step)
    return folder


def test_a_new_export_points_export_at_itself_and_keeps_the_old(tmp_path):
    first, second = _version(tmp_path, 4), _version(tmp_path, 6)
    point_export(tmp_path, first)
    point_export(tmp_path, second)
    assert (tmp_path / "export").resolve() == second.resolve()
    assert (first / "model.safetensors").read_text() == "weights of step 4"  # the one an eval read is intact
    assert export_info(tmp_path / "export")["step"] == 6
    assert run_folder(tmp_path / "export") == run_folder(first) == tmp_path.resolve()


def test_a_real_export_folder_is_moved_into_exports_never_deleted(tmp_path):
    copied = _version(tmp_path, 4)
    os.rename(copied, tmp_path / "export")  # as a copy of the run without links leaves it
    point_export(tmp_path, _version(tmp_path, 6))
    assert (tmp_path / "exports/step-00000004/model.safetensors").read_text() == "weights of step 4"
    assert (tmp_path / "export").resolve().name == "step-00000006"


def test_exported_files_get_the_mode_checkpoints_get(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "model.safetensors", lambda tmp: open(tmp, "w").write("x"))
        with open(tmp_path / "step.ckpt", "w") as f:  # what torch.save's open() gives a checkpoint
            f.write("x")
    finally:
        os.umask(old)
    modes = {oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()}
    assert modes == {"0o644"}


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _SigtermAt(L.Callback):
    """Delivers SIGTERM, as Lightning's handler records it, after optimizer step `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer._signal_connector.received_sigterm = True


def test_sigterm_writes_a_checkpoint_at_the_step_it_stopped(tmp_path):
    checkpoint = AtomicCheckpoint(tmp_path, every_n_steps=100)
    trainer = L.Trainer(accelerator="cpu", max_steps=20, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[checkpoint, _SigtermAt(3)])
    with pytest.raises(SIGTERMException):
        trainer.fit(_Tiny(), train_dataloaders=torch.utils.data.DataLoader(torch.randn(40, 2), batch_size=2))
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000003.ckpt"]


def test_the_lock_file_goes_with_a_run_that_ends(tmp_path):
    with folder_lock(tmp_path):
        assert (tmp_path / LOCK).read_text().strip() == str(os.getpid())
    assert not (tmp_path / LOCK).exists()
    with pytest.raises(ValueError), folder_lock(tmp_path):  # a failed run: the lock file goes too
        raise ValueError("boom")
    assert not (tmp_path / LOCK).exists()
    with folder_lock(tmp_path), pytest.raises(RunError):  # still refused while held
        with folder_lock(tmp_path):
            pass


def test_lightnings_accelerator_and_stopped_lines_are_dropped():
    silence_noise()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    try:
        for line in ("GPU available: False, used: False", "TPU available: False, using: 0 TPU cores",
                     "`Trainer.fit` stopped: `max_steps=4` reached.", "kept line"):
            logger.warning(line)
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == "kept line\n"


def test_the_terminal_bar_counts_optimizer_steps(tmp_path):
    stream = io.StringIO()
    bar, plain = StepBar(stream), PlainProgress(5, stream)
    trainer = L.Trainer(accelerator="cpu", max_steps=10, logger=False, enable_model_summary=False,
                        enable_checkpointing=False, callbacks=[bar])
    trainer.fit(_Tiny(), train_dataloaders=torch.utils.data.DataLoader(torch.randn(40, 2), batch_size=2))
    frames = stream.getvalue()
    assert "step 10/10" in frames and "Epoch" not in frames and "loss " in frames
    assert plain.line(97, 120, 0.26).startswith("step 97/120  loss 0.2600")


def test_opening_a_runs_store_leaves_mlflow_tracking_uri_as_the_user_set_it(tmp_path, monkeypatch):
    from lightbagel.recipe import load_recipe
    from lightbagel.runs.tracking import make_logger
    from tests.conftest import TINY

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipe = load_recipe(TINY, [f"output_dir={tmp_path / 'run'}"])
    logger = make_logger(recipe, tmp_path / "run", None, "run")
    assert logger.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"  # the project store beside it
    assert "MLFLOW_TRACKING_URI" not in os.environ  # else the next fit in this process would log here
    logger.finalize("success")
