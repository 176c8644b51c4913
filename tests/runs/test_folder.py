"""Run control (runs/folder.py, runs/tracking.py): which recipe changes a resume refuses, when
recipes are compared at all, and a run left RUNNING by a killed process."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightbagel.recipe import load_recipe
from lightbagel.runs.folder import RunError, check_resume, write_record

TINY = Path(__file__).resolve().parents[2] / "recipes" / "tiny.yaml"


def _recipe(*overrides: str) -> dict:
    """The resolved recipe as `fit` compares it."""
    return OmegaConf.to_container(load_recipe(TINY, list(overrides)).resolved)


@pytest.mark.parametrize("change", ["trainer.precision=bf16-mixed", "trainer.gradient_clip_val=0.5",
                                    "trainer.ema.decay=0.99", "optim.lr=3e-4", "data.batch_size=4"])
def test_a_resume_refuses_every_change_to_what_is_trained(tmp_path, change):
    """Only the keys in runs.folder.RESUMABLE may change; trainer settings other than those train differently."""
    write_record(tmp_path, _recipe(), None)
    with pytest.raises(RunError, match=change.split("=")[0]):
        check_resume(tmp_path, _recipe(change), has_checkpoint=True)


@pytest.mark.parametrize("change", ["trainer.max_steps=9000", "trainer.log_every_n_steps=7", "trainer.sample_steps=3"])
def test_a_resume_may_change_how_long_and_how_often(tmp_path, change):
    write_record(tmp_path, _recipe(), None)
    assert check_resume(tmp_path, _recipe(change), has_checkpoint=True) is not None


def test_recipes_are_compared_only_when_there_is_a_checkpoint_to_resume(tmp_path):
    """A run that died before its first checkpoint left nothing to resume: the next command starts
    over under its own recipe instead of being refused."""
    write_record(tmp_path, _recipe(), None)
    assert check_resume(tmp_path, _recipe("optim.lr=3e-4"), has_checkpoint=False) is None


def test_a_run_left_running_is_marked_killed_before_it_resumes(tmp_path, caplog):
    """SIGKILL leaves the MLflow run RUNNING: the resume ends it as KILLED (its end time stays), then
    reopens it."""
    from mlflow import MlflowClient

    from lightbagel.runs.tracking import reopen

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("t"))
    assert run.info.status == "RUNNING" and run.info.end_time is None
    with caplog.at_level(logging.WARNING):
        assert reopen(client, run.info.run_id) == run.info.run_id
    info = client.get_run(run.info.run_id).info
    assert info.status == "RUNNING" and info.end_time is not None
    assert "left RUNNING by a process that died; marked KILLED" in caplog.text
