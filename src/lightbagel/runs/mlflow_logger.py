"""MLflow metric writes off the training thread (issue: synchronous writes cost ~8 ms per step).

`BackgroundMLFlowLogger` is Lightning's `MLFlowLogger` whose `log_metrics` only queues the
values; one worker thread writes them in order through the parent's `log_metrics`. `flush`
waits until every queued value is written; `finalize` and every checkpoint (checkpointing.py)
call it, so nothing logged is lost, even by a run killed and resumed from its last checkpoint.
A write error is raised on the training thread at the next call. `save` does not wait: Lightning
calls it after every `log_metrics`, which would make each logging step wait for the writes.
Opening the store leaves `$MLFLOW_TRACKING_URI` as the user left it (see `experiment`).
"""

from __future__ import annotations

import os
import queue
import threading
from contextlib import contextmanager
from typing import Mapping, Optional

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

ENV = "MLFLOW_TRACKING_URI"


class BackgroundMLFlowLogger(MLFlowLogger):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pending: queue.Queue = queue.Queue()
        self._worker: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self._closed = False  # after `finalize`: writes are synchronous again, nothing is left queued

    @property
    def experiment(self):
        """Lightning's client; opening it calls `mlflow.set_tracking_uri`, which also sets
        $MLFLOW_TRACKING_URI, and every later run in the process (a pretrain stage, a test) or a child
        process would then take this logger's store for the user's choice."""
        with _user_env():
            return MLFlowLogger.experiment.fget(self)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        self._raise_pending_error()
        if self._closed:
            return MLFlowLogger.log_metrics(self, metrics, step)
        if self._worker is None:
            self._worker = threading.Thread(target=self._write_loop, name="mlflow-metrics", daemon=True)
            self._worker.start()
        self._pending.put((dict(metrics), step))

    def _write_loop(self) -> None:
        while (item := self._pending.get()) is not None:
            try:
                if self._error is None:
                    MLFlowLogger.log_metrics(self, *item)
            except BaseException as error:  # re-raised on the training thread
                self._error = error
            finally:
                self._pending.task_done()
        self._pending.task_done()

    def flush(self) -> None:
        """Blocks until every queued metric is written."""
        self._pending.join()
        self._raise_pending_error()

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"writing metrics to MLflow failed: {error}") from error

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if self._worker is not None:
            self._pending.put(None)
            self._worker.join()
            self._worker = None
        self._closed = True
        self._raise_pending_error()
        super().finalize(status)


@contextmanager
def _user_env():
    """Restores $MLFLOW_TRACKING_URI on the way out to what it was on the way in."""
    before = os.environ.get(ENV)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before
