"""Atomic checkpoints every N steps, the newest complete one found for resuming, and data
loaders that resume at the step they stopped.

A checkpoint (a directory of shards under FSDP2, one file otherwise) is written under a hidden
temporary name and renamed to `step-NNNNNNNN.ckpt` only once every rank has finished: a run
killed while saving leaves the previous checkpoint as the newest complete one.
"""

from __future__ import annotations

import logging
import pickle
import re
import shutil
import zipfile
from pathlib import Path
from typing import Optional

import lightning as L
import torch

from lightbagel.errors import CheckpointError, first_line
from lightbagel.runs.mlflow_logger import BackgroundMLFlowLogger

log = logging.getLogger(__name__)

META = "meta.pt"  # Lightning's non-tensor part of a sharded checkpoint
_NAME = re.compile(r"^step-(\d{8})\.ckpt$")
_TMP_PREFIX = ".tmp-"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.ckpt"


def complete_checkpoints(dirpath: Path | str) -> list[Path]:
    """Complete checkpoints, oldest first (temporary ones never match the name)."""
    dirpath = Path(dirpath)
    if not dirpath.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in dirpath.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(dirpath: Path | str) -> Optional[Path]:
    found = complete_checkpoints(dirpath)
    return found[-1] if found else None


def newest_loadable(dirpath: Path | str) -> Optional[Path]:
    """The newest complete checkpoint that reads back; each newer unreadable one (truncated by a
    full disk, corrupt, not a checkpoint) is skipped with a one-line warning."""
    for ckpt in reversed(complete_checkpoints(dirpath)):
        problem = unreadable(ckpt)
        if problem is None:
            return ckpt
        log.warning("checkpoint %s is unreadable (%s); falling back to an older one", ckpt, problem)
    return None


def unreadable(ckpt: Path) -> Optional[str]:
    """Why `ckpt` cannot be loaded, or None: it must unpickle (tensors memory-mapped, not read), and
    every record of its zip (torch.save writes zip files) must match its CRC, so bytes damaged in
    place, the size kept, are found too. A sharded checkpoint's shards are only sized."""
    try:
        if ckpt.is_dir():
            safe_load(ckpt / META)
            _check_crc(ckpt / META)
            _check_shard_sizes(ckpt)
        else:
            safe_load(ckpt, mmap=True)
            _check_crc(ckpt)
    except (CheckpointError, OSError, ValueError, zipfile.BadZipFile) as exc:
        return first_line(exc)
    return None


def checkpoint_recipe(ckpt: Path) -> Optional[dict]:
    """The resolved recipe a checkpoint was trained with, as plain data; None if it holds none."""
    from omegaconf import OmegaConf

    meta = safe_load(ckpt / META if ckpt.is_dir() else ckpt, mmap=not ckpt.is_dir())
    text = meta.get("recipe_yaml")
    return OmegaConf.to_container(OmegaConf.create(text)) if isinstance(text, str) else None


def _check_crc(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        damaged = archive.testzip()
    if damaged is not None:
        raise ValueError(f"record {damaged} does not match its CRC: the file was damaged after it was written")


def safe_load(path: Path, mmap: bool = False) -> dict:
    """torch.load of tensors and plain containers only; anything else (a pickle that would run
    code, a truncated file) is a one-line CheckpointError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused: it holds objects other than tensors and plain values, "
                              f"which could run code on loading ({first_line(exc)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line(exc)})") from None


def _check_shard_sizes(ckpt: Path) -> None:
    """Every byte range the sharded checkpoint's metadata points at lies inside its shard file."""
    from torch.distributed.checkpoint import FileSystemReader

    ends: dict[str, int] = {}
    for info in FileSystemReader(str(ckpt)).read_metadata().storage_data.values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    for name, end in ends.items():
        size = (ckpt / name).stat().st_size
        if size < end:
            raise ValueError(f"shard {name} is truncated ({size} of {end} bytes)")



def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


class AtomicCheckpoint(L.Callback):
    """Saves every `every_n_steps` optimizer steps and at the end; keeps the newest `keep`."""

    def __init__(self, dirpath: Path | str, every_n_steps: int, keep: int = 2):
        if keep < 1:
            raise ValueError(f"trainer.keep_checkpoints must be >= 1, got {keep}")
        self.dirpath, self.every, self.keep = Path(dirpath), max(1, every_n_steps), keep
        self._saved_step = -1
        self._verified: dict[tuple, bool] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if stepped and trainer.global_step % self.every == 0:
            self.save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.save(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """SIGTERM stops the loop after a whole step (on every rank alike: Lightning broadcasts it),
        so the stop step is saved: a resume then replays, and logs again, no step already logged."""
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException):
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> Path:
        """Collective: every rank calls it. Returns the checkpoint's final path."""
        step = trainer.global_step
        final = self.dirpath / checkpoint_name(step)
        if step == self._saved_step:
            return final
        tmp = self.dirpath / f"{_TMP_PREFIX}{final.name}"
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            for stale in self.dirpath.glob(f"{_TMP_PREFIX}*"):  # left by a run killed mid-save
                _remove(stale)
        flush_metrics(trainer)
        trainer.strategy.barrier("lightbagel.checkpoint.prepare")
        try:
            trainer.save_checkpoint(tmp, weights_only=False)  # every rank writes its shard; ends with a barrier
        except OSError as exc:  # a full disk, a quota: the run cannot keep its promise to resume
            _remove(tmp)
            previous = latest_checkpoint(self.dirpath)
            kept = f"{previous.name} stays the resume point" if previous else "no earlier checkpoint to resume"
            raise CheckpointError(f"cannot write checkpoint {final}: {exc.strerror or exc}; removed the partial "
                                  f"file; {kept}") from None
        if trainer.is_global_zero:
            _remove(final)
            tmp.rename(final)
            for old in self.prunable(final):
                _remove(old)
        trainer.strategy.barrier("lightbagel.checkpoint.commit")
        self._saved_step = step
        log.info("checkpoint: %s", final)
        return final


    def prunable(self, final: Path) -> list[Path]:
        """The readable checkpoints beyond the newest `keep`, counting `final` (just written) as
        kept. An unreadable one (damaged, or left by an older run) is never counted as kept, so it
        cannot push out a good one; it stays for a person to look at."""
        others = [p for p in complete_checkpoints(self.dirpath) if p != final]
        readable = [p for p in others if self._readable(p)]
        return readable[: max(0, len(readable) - (self.keep - 1))]

    def _readable(self, ckpt: Path) -> bool:
        """`unreadable(ckpt) is None`, remembered per file version: each save would read them all again."""
        stat = ckpt.stat()
        key = (ckpt.name, stat.st_size, stat.st_mtime_ns)
        if key not in self._verified:
            problem = unreadable(ckpt)
            if problem is not None:
                log.warning("checkpoint %s is unreadable (%s); kept, but not counted as a resume point", ckpt, problem)
            self._verified[key] = problem is None
        return self._verified[key]


def flush_metrics(trainer: L.Trainer) -> None:
    """Waits for metrics still queued for MLflow: a run resumed from this checkpoint does not log
    the steps before it again, so they must be in the store before it exists."""
    for logger in trainer.loggers:
        if isinstance(logger, BackgroundMLFlowLogger):
            logger.flush()
