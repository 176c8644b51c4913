"""Reading checkpoints back (training/checkpointing.py): a sharded checkpoint whose shard lost bytes
is unreadable before any rank tries to load it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from lightbagel.training.checkpointing import unreadable


def _sharded(path: Path) -> Path:
    """A checkpoint in the FSDP2 layout, written by one process: DCP shards beside `meta.pt`."""
    path.mkdir()
    state = {"w": torch.arange(4096, dtype=torch.float32), "b": torch.ones(64)}
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(path)))
    torch.save({"global_step": 2}, path / "meta.pt")
    return path


# One process writes every shard here, as torch warns it assumes: chosen knowingly.
@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_truncated_shard_makes_a_sharded_checkpoint_unreadable(tmp_path):
    ckpt = _sharded(tmp_path / "step-00000002.ckpt")
    assert unreadable(ckpt) is None
    shard = next(ckpt.glob("*.distcp"))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # a full disk mid-write, or a partial copy
    problem = unreadable(ckpt)
    assert problem is not None and f"shard {shard.name} is truncated" in problem
