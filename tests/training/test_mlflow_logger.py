"""Metrics written off the training thread: every value arrives, in order, before the run ends."""

from __future__ import annotations

import time

import pytest
from lightning.pytorch.loggers import MLFlowLogger

from lightbagel.training.mlflow_logger import BackgroundMLFlowLogger


def _logger(tmp_path) -> BackgroundMLFlowLogger:
    return BackgroundMLFlowLogger(experiment_name="t", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_every_value_is_in_the_store_after_finalize(tmp_path):
    logger = _logger(tmp_path)
    for step in range(30):
        logger.log_metrics({"loss": 1.0 / (step + 1), "lr": step * 1e-5}, step=step)
    logger.finalize("success")
    history = logger.experiment.get_metric_history(logger.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(s, 1.0 / (s + 1)) for s in range(30)]
    assert len(logger.experiment.get_metric_history(logger.run_id, "lr")) == 30


def test_finalize_waits_for_slow_writes(tmp_path, monkeypatch):
    written = []

    def slow_write(self, metrics, step=None):
        time.sleep(0.02)
        written.append(step)

    monkeypatch.setattr(MLFlowLogger, "log_metrics", slow_write)
    logger = _logger(tmp_path)
    for step in range(10):
        logger.log_metrics({"loss": 0.5}, step=step)
    assert len(written) < 10  # the training thread did not wait for the writes...
    logger.finalize("success")
    assert written == list(range(10))  # ...and the run's end did, in order


def test_a_failed_write_is_raised_on_the_training_thread(tmp_path, monkeypatch):
    def broken(self, metrics, step=None):
        raise OSError("disk full")

    monkeypatch.setattr(MLFlowLogger, "log_metrics", broken)
    logger = _logger(tmp_path)
    logger.log_metrics({"loss": 0.5}, step=0)
    with pytest.raises(RuntimeError, match="writing metrics to MLflow failed: disk full"):
        logger.flush()
