"""One output folder holds one run: a lock against a second process, the record that ties the
folder to its recipe and MLflow run, and resume only when the recipe still trains the same thing.

Rerunning a command resumes its run (docs/design.md, "Runs"). A run resumes when every
training-relevant key of the resolved recipe matches the one recorded in `run.json`; keys that only
say how long to train or how often to log, sample and checkpoint may change (extending a run is a
resume). Anything else is refused with one line naming the keys and the two ways out.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from lightbagel.errors import LightBagelError

RECORD = "run.json"
LOCK = ".lock"
# Keys a resume may change: when to stop, what to log and keep, where outputs go.
RESUMABLE = (
    "name", "output_dir", "trainer.card", "trainer.max_steps", "trainer.log_every_n_steps",
    "trainer.sample_every_n_steps", "trainer.num_sample_images", "trainer.sample_steps",
    "trainer.eval_every_n_steps", "trainer.eval_per_category", "trainer.enable_progress_bar",
    "trainer.num_threads", "trainer.mlflow", "trainer.checkpoint_every_n_steps", "trainer.keep_checkpoints",
    "trainer.max_nonfinite_steps",
)
_SHOWN_KEYS = 4
_ABSENT = "(absent)"


class RunError(LightBagelError, RuntimeError):
    """A run-control refusal in one line: the folder, what is wrong, what to type instead."""


def is_rank_zero() -> bool:
    """The launcher's global rank from the environment (torchrun, SLURM), before any process group."""
    from lightning.fabric.utilities.rank_zero import _get_rank

    return (_get_rank() or 0) == 0


def read_record(out: Path) -> Optional[dict]:
    """The folder's record; None when it is missing or is not one (truncated, garbage, wrong types)."""
    try:
        record = json.loads((out / RECORD).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not (isinstance(record, dict) and isinstance(record.get("recipe", {}), dict)
            and isinstance(record.get("mlflow_run_id"), (str, type(None)))):
        return None
    return record


def write_record(out: Path, recipe: dict, mlflow_run_id: Optional[str]) -> None:
    """Atomically: a run killed while writing keeps the previous record."""
    tmp = out / f".{RECORD}.tmp"
    tmp.write_text(json.dumps({"recipe": recipe, "mlflow_run_id": mlflow_run_id}, indent=1))
    os.replace(tmp, out / RECORD)


def differing_keys(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, current value) for each training-relevant key that changed."""
    old, new = _flatten(saved), _flatten(current)
    keys = sorted(k for k in old.keys() | new.keys()
                  if not _resumable(k) and old.get(k, _ABSENT) != new.get(k, _ABSENT))
    return [(k, old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in keys]


def check_resume(out: Path, recipe: dict, has_checkpoint: bool, trained: Optional[dict] = None) -> Optional[dict]:
    """The record of the run to resume (empty without a readable run.json), None to start one;
    RunError when the recipe changed. `trained`, the recipe the checkpoint carries (the one it was
    trained with), is compared first: a folder whose run.json is missing or corrupt is still checked."""
    if not has_checkpoint:
        return None
    record = read_record(out)
    saved = trained if trained is not None else (record or {}).get("recipe", {})
    differ = differing_keys(saved, recipe)
    if differ:
        shown = ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in differ[:_SHOWN_KEYS])
        more = f" and {len(differ) - _SHOWN_KEYS} more" if len(differ) > _SHOWN_KEYS else ""
        raise RunError(f"{out} holds a run of another recipe ({shown}{more}); to start over add --fresh "
                       "(a new folder beside it, the old one kept) or give the run a new name=NAME "
                       "(or output_dir=DIR)")
    return record or {}


def fresh_output_dir(out: Path) -> Path:
    """`out` when it holds no run yet, else the first free `out-2`, `out-3`, ... beside it."""
    if not (out / RECORD).exists() and not (out / "checkpoints").exists():
        return out
    n = 2
    while out.with_name(f"{out.name}-{n}").exists():
        n += 1
    return out.with_name(f"{out.name}-{n}")


@contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """Holds an exclusive lock on `out` (rank zero only); the OS drops it when the process dies,
    and the lock file goes with a process that ends normally."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one process per folder is then up to the user
        yield
        return
    if not is_rank_zero():
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out / LOCK, fcntl) as handle:
        handle.seek(0), handle.truncate(), handle.write(f"{os.getpid()}\n"), handle.flush()
        try:
            yield
        finally:
            os.unlink(out / LOCK)  # while still held: a waiting process then locks a fresh file


@contextmanager
def _locked(path: Path, fcntl) -> Iterator:
    """The open, locked lock file; retried when its holder removed it between our open and lock."""
    while True:
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                pid = handle.read().strip() or "?"
                raise RunError(f"{path.parent} is in use by another lightbagel-fit (pid {pid}); wait for it to "
                               f"end, or train elsewhere with --fresh or name=NAME") from None
            if path.exists() and os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                yield handle
                return


def _resumable(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat
