"""Metrics written off the training thread: every value arrives, in order, before the run ends."""

from __future__ import annotations

import os
import threading

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import MLFlowLogger
from torch.utils.data import DataLoader

from lightbagel.runs.mlflow_logger import BackgroundMLFlowLogger
from lightbagel.training.checkpointing import AtomicCheckpoint


def _logger(tmp_path) -> BackgroundMLFlowLogger:
    return BackgroundMLFlowLogger(experiment_name="t", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


HANG_GUARD_S = 60  # only so that a regression fails instead of hanging; no verdict waits on time


class _HeldWrites:
    """MLflow writes recorded as (step, on the training thread); off that thread each waits until
    `release` is set, so a write that happens before it can only have happened on the training thread."""

    def __init__(self):
        self.written: list[tuple[int, bool]] = []
        self.release = threading.Event()

    def write(self, logger, metrics, step=None) -> None:
        on_training_thread = threading.current_thread() is threading.main_thread()
        if not on_training_thread:
            self.release.wait(HANG_GUARD_S)
        self.written.append((step, on_training_thread))


@pytest.fixture
def held_writes(monkeypatch) -> _HeldWrites:
    held = _HeldWrites()
    monkeypatch.setattr(MLFlowLogger, "log_metrics", lambda self, metrics, step=None: held.write(self, metrics, step))
    return held


def test_every_value_is_in_the_store_after_finalize(tmp_path):
    logger = _logger(tmp_path)
    for step in range(30):
        logger.log_metrics({"loss": 1.0 / (step + 1), "lr": step * 1e-5}, step=step)
    logger.finalize("success")
    history = logger.experiment.get_metric_history(logger.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(s, 1.0 / (s + 1)) for s in range(30)]
    assert len(logger.experiment.get_metric_history(logger.run_id, "lr")) == 30


def test_finalize_waits_for_the_writes(tmp_path, held_writes):
    logger = _logger(tmp_path)
    for step in range(10):
        logger.log_metrics({"loss": 0.5}, step=step)
    assert held_writes.written == []  # the training thread did not write...
    held_writes.release.set()
    logger.finalize("success")
    assert held_writes.written == [(s, False) for s in range(10)]  # ...and the run's end waited, in order


def test_after_finalize_a_value_is_written_before_log_metrics_returns(tmp_path, held_writes):
    """What a finished run still logs (the final export's, an eval's) is never left in a queue
    that no one flushes any more."""
    logger = _logger(tmp_path)
    logger.log_metrics({"loss": 0.5}, step=0)
    held_writes.release.set()
    logger.finalize("success")
    logger.log_metrics({"export/seconds": 1.0}, step=1)
    assert held_writes.written == [(0, False), (1, True)]


def test_a_failed_write_is_raised_on_the_training_thread(tmp_path, monkeypatch):
    def broken(self, metrics, step=None):
        raise OSError("disk full")

    monkeypatch.setattr(MLFlowLogger, "log_metrics", broken)
    logger = _logger(tmp_path)
    logger.log_metrics({"loss": 0.5}, step=0)
    with pytest.raises(RuntimeError, match="writing metrics to MLflow failed: disk full"):
        logger.flush()
    logger.finalize("failed")  # as Lightning does when the run ends on the error: the worker ends with it
    assert "mlflow-metrics" not in [t.name for t in threading.enumerate()]


def test_opening_the_store_leaves_mlflow_tracking_uri_as_the_user_set_it(tmp_path, monkeypatch):
    """Lightning's `experiment` calls mlflow.set_tracking_uri, which sets the variable: a later
    fit in this process would take this logger's store for the user's."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    logger = _logger(tmp_path)
    assert logger.experiment.get_experiment_by_name("t") is not None
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///user.db")
    logger.finalize("success")
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///user.db"


def test_save_does_not_wait_for_the_writes(tmp_path, held_writes):
    """Lightning calls `save` after every `log_metrics`: waiting there would put every write back
    on the training thread."""
    logger = _logger(tmp_path)
    for step in range(10):
        logger.log_metrics({"loss": 0.5}, step=step)
        logger.save()
    assert held_writes.written == []  # save returned while every write was still held
    held_writes.release.set()
    logger.finalize("success")
    assert held_writes.written == [(s, False) for s in range(10)]


class _CountedLogger(BackgroundMLFlowLogger):
    """Counts what was queued; held writes go through only while someone waits for them (`flush`,
    `finalize`), so a value is written by a checkpoint only if the checkpoint waited for it."""

    queued = 0
    held: _HeldWrites

    def log_metrics(self, metrics, step=None) -> None:
        self.queued += 1
        super().log_metrics(metrics, step)

    def flush(self) -> None:
        self.held.release.set()
        super().flush()
        self.held.release.clear()

    def finalize(self, status: str = "success") -> None:
        self.held.release.set()
        super().finalize(status)


class _StoreAtCheckpoint(L.Callback):
    """After AtomicCheckpoint: how many values were queued and how many written when it saved."""

    def __init__(self, written: list, every: int):
        self.written, self.every, self.seen = written, every, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self.seen.append((trainer.logger.queued, len(self.written)))


class _Line(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        loss = (self.w - batch).pow(2).mean()
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_checkpoint_waits_until_every_metric_before_it_is_written(tmp_path, held_writes):
    """A run resumed from a checkpoint does not log the steps before it again: they are in the
    store by the time the checkpoint exists, even though writes happen off the training thread."""
    logger = _CountedLogger(experiment_name="t", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    logger.held = held_writes
    probe = _StoreAtCheckpoint(held_writes.written, every=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=12, log_every_n_steps=1, logger=logger, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        callbacks=[AtomicCheckpoint(tmp_path / "ckpt", every_n_steps=4), probe])
    trainer.fit(_Line(), train_dataloaders=DataLoader(torch.ones(12, 1), batch_size=1))
    assert [queued for queued, _ in probe.seen] == [3, 7, 11]  # values logged before each checkpoint
    assert all(written == queued for queued, written in probe.seen), probe.seen
