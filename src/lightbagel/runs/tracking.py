"""The project's MLflow store: one SQLite store and artifact folder beside the output folders
(`outputs/mlflow.db`, `outputs/mlartifacts/`), so every run of a project compares in one UI, or
the store `MLFLOW_TRACKING_URI` names; one experiment per recipe family (the root recipe of its
`base:` chain, e.g. `tiny` for tiny.yaml and every run made from it); one MLflow run per output
folder (a resume continues it), an end status that tells a stopped run (KILLED) from a crash
(FAILED), and evaluation runs nested under the training run they evaluate."""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Optional

import lightning as L

from lightbagel.runs.mlflow_logger import ENV, BackgroundMLFlowLogger

DB = "mlflow.db"
ARTIFACTS = "mlartifacts"
# Without it MLflow 3 may open an experiment on the GenAI traces view; this one is model training.
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"

log = logging.getLogger(__name__)


def store_dir(out: Path) -> Path:
    """Where the default store of the run in output folder `out` lives: beside it, shared by its siblings."""
    return Path(out).resolve().parent


def store_uri(out: Path, configured: Optional[str] = None) -> str:
    """MLflow's own variable first, then the recipe's `trainer.mlflow.tracking_uri`, else the project store."""
    return os.environ.get(ENV) or configured or f"sqlite:///{store_dir(out) / DB}"


def is_default_store(out: Path, uri: str) -> bool:
    return uri == f"sqlite:///{store_dir(out) / DB}"


def relocate(out: Path) -> None:
    """Points the store's artifact locations back inside `out` (the folder holding the store) after
    the folder was moved or copied.

    MLflow records them as absolute paths; rewriting the prefix on every open keeps them relative
    to the folder in effect, so a moved copy logs into itself, never into the original.
    """
    db, new = out / DB, str((out / ARTIFACTS).resolve())
    if not db.is_file():
        return
    with closing(sqlite3.connect(db)) as con, con:
        stale = con.execute("SELECT DISTINCT artifact_location FROM experiments WHERE artifact_location LIKE ?",
                            (f"%/{ARTIFACTS}",)).fetchall()
        moved = [old for (old,) in stale if old != new]
        for old in moved:
            con.execute("UPDATE experiments SET artifact_location = ? WHERE artifact_location = ?", (new, old))
            con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) WHERE artifact_uri LIKE ?",
                        (new, len(old) + 1, f"{old}/%"))
    if moved:
        _forget_artifact_locations()


def _forget_artifact_locations() -> None:
    """MLflow caches each run's artifact location by run id for the life of the process; a copy
    of a folder has the same run ids, so a process that used the original must forget them."""
    from mlflow.tracking._tracking_service import utils

    cache = getattr(utils, "_artifact_repos_cache", None)
    if cache is not None:
        cache.clear()


def experiment_id(client, name: str, artifact_location: Optional[str]) -> str:
    found = client.get_experiment_by_name(name)
    exp_id = found.experiment_id if found else client.create_experiment(name, artifact_location=artifact_location)
    client.set_experiment_tag(exp_id, KIND_TAG, KIND)
    return exp_id


def reopen(client, run_id: Optional[str]) -> Optional[str]:
    """`run_id` set back to RUNNING for a resume; a run still RUNNING was killed without a word, so
    it is first marked KILLED. None when the store no longer holds the run."""
    if run_id is None:
        return None
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:  # deleted, or the record came from another store: a new run replaces it
        return None
    if run.info.status == "RUNNING":
        client.set_terminated(run_id, "KILLED")
        log.warning("mlflow run %s was left RUNNING by a process that died; marked KILLED", run_id)
    client.update_run(run_id, status="RUNNING")
    return run_id


class RunLogger(BackgroundMLFlowLogger):
    """The run's MLflow logger: metrics written off the training thread (runs/mlflow_logger.py), and an
    end status that says how a run stopped: Ctrl-C or SIGTERM is KILLED, not FAILED."""

    @property
    def tracking_uri(self) -> str:
        """The store the run writes to (Lightning keeps it private)."""
        return self._tracking_uri

    def finalize(self, status: str = "success") -> None:
        if status == "failed" and isinstance(sys.exc_info()[1], (KeyboardInterrupt, SystemExit)):
            status = "KILLED"
        super().finalize(status)


class ActiveTime(L.Callback):
    """`time/train_seconds`: the seconds spent training, summed over every resume. MLflow's own
    Duration runs from a run's first start to its last end, pauses between resumes included."""

    KEY = "time/train_seconds"

    def __init__(self):
        self._start, self._before = 0.0, 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._start, self._before = time.perf_counter(), 0.0
        logger = trainer.logger
        if isinstance(logger, RunLogger) and trainer.is_global_zero:
            self._before = logger.experiment.get_run(logger.run_id).data.metrics.get(self.KEY, 0.0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            self._log(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._log(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._log(trainer)

    def _log(self, trainer) -> None:
        if trainer.logger is not None:
            seconds = self._before + time.perf_counter() - self._start
            trainer.logger.log_metrics({self.KEY: seconds}, step=trainer.global_step)


def make_logger(recipe, out: Path, run_id: Optional[str], run_name: Optional[str]) -> Optional[RunLogger]:
    """The run's logger: `run_id` continued when the store holds it, else a new run named `run_name`."""
    from mlflow import MlflowClient

    from lightbagel.runs.folder import is_rank_zero

    cfg = recipe.config.trainer.mlflow
    if not cfg.enabled:
        return None
    uri = store_uri(out, cfg.tracking_uri)
    home = store_dir(out)
    artifacts = str(home / ARTIFACTS) if is_default_store(out, uri) else None
    experiment = cfg.experiment or recipe.family or recipe.config.name
    resumed = run_id
    if is_rank_zero():  # one process writes the store; the logger is a no-op on the other ranks
        if artifacts is not None:
            home.mkdir(parents=True, exist_ok=True)
            relocate(home)
        client = MlflowClient(tracking_uri=uri)
        experiment_id(client, experiment, artifacts)
        resumed = reopen(client, run_id)
    logger = RunLogger(experiment_name=experiment, run_name=cfg.run_name or run_name or recipe.config.name,
                       tracking_uri=uri, artifact_location=artifacts, run_id=resumed)
    if resumed is None:  # params are immutable in MLflow: a resume keeps the ones the run began with
        logger.log_hyperparams(recipe.flat_params())
    logger.experiment.log_text(logger.run_id, recipe.to_yaml(), "recipe.yaml")
    return logger


def training_run(model_dir: Path, configured: Optional[str] = None) -> Optional[tuple[str, str, str]]:
    """(tracking URI, experiment id, run id) of the run that trained an export, from its output
    folder's record; `configured` is the export recipe's `trainer.mlflow.tracking_uri`."""
    from lightbagel.model_folder import run_folder
    from lightbagel.runs.folder import read_record

    out = run_folder(model_dir)
    record = read_record(out)
    uri = store_uri(out, configured)
    local = is_default_store(out, uri)
    if record is None or not record.get("mlflow_run_id") or (local and not (store_dir(out) / DB).is_file()):
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if local:
        relocate(store_dir(out))
    try:
        run = MlflowClient(tracking_uri=uri).get_run(record["mlflow_run_id"])
    except MlflowException:  # the run was deleted from the store
        return None
    return uri, run.info.experiment_id, run.info.run_id
