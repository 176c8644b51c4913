"""What is kept and what is resumed when checkpoints are damaged: pruning counts only checkpoints
that read back, damage inside a file is found by its zip CRC, and a folder whose run.json is missing
or corrupt is checked against the recipe its checkpoint carries."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from lightbagel.cli.fit import main as fit_main
from lightbagel.recipe import load_recipe
from lightbagel.training.checkpointing import AtomicCheckpoint, checkpoint_name, newest_loadable, unreadable

TINY = Path(__file__).resolve().parents[2] / "recipes" / "tiny.yaml"


def fake_trainer(step: int) -> SimpleNamespace:
    """What AtomicCheckpoint.save reads of a one-process Trainer; the checkpoint is a real torch zip."""
    save = lambda path, weights_only: torch.save({"state_dict": {"w": torch.full((4,), float(step))}}, path)  # noqa: E731
    return SimpleNamespace(global_step=step, is_global_zero=True, loggers=[], save_checkpoint=save,
                           strategy=SimpleNamespace(barrier=lambda name: None))


def test_pruning_never_counts_an_unreadable_checkpoint_as_kept(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    stale = ckpts / checkpoint_name(99)  # left by an older, longer run, then damaged
    stale.write_bytes(b"PK\x03\x04 not a checkpoint")
    callback = AtomicCheckpoint(ckpts, every_n_steps=1, keep=1)
    for step in (2, 3):
        callback.save(fake_trainer(step))
    assert sorted(p.name for p in ckpts.iterdir()) == [checkpoint_name(3), stale.name]
    assert newest_loadable(ckpts) == ckpts / checkpoint_name(3)  # a rerun resumes at step 3, not 0


def test_sigterm_saves_the_step_it_stopped_at_and_an_error_does_not(tmp_path):
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    callback = AtomicCheckpoint(tmp_path, every_n_steps=2, keep=3)
    callback.on_exception(fake_trainer(5), None, RuntimeError("a bug mid-step: its state is not a resume point"))
    assert newest_loadable(tmp_path) is None
    callback.on_exception(fake_trainer(5), None, SIGTERMException())
    assert newest_loadable(tmp_path) == tmp_path / checkpoint_name(5)  # the resume logs from step 6 on


def flip_in_place(path: Path, count: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + count] = bytes(b ^ 0xFF for b in data[mid:mid + count])
    path.write_bytes(bytes(data))


def test_bytes_damaged_in_place_are_found_by_the_zip_crc(tmp_path):
    for step in (2, 4):
        weights = torch.arange(64 * 1024, dtype=torch.float32) * step
        torch.save({"state_dict": {"w": weights}}, tmp_path / checkpoint_name(step))
    newest = tmp_path / checkpoint_name(4)
    size = newest.stat().st_size
    flip_in_place(newest)
    assert newest.stat().st_size == size and torch.load(newest, weights_only=True, mmap=True)  # unpickles anyway
    problem = unreadable(newest)
    assert problem is not None and "does not match its CRC" in problem and "data/" in problem
    assert newest_loadable(tmp_path) == tmp_path / checkpoint_name(2)


RECORDS = {  # what run.json holds: nothing, a truncated write, valid JSON of the wrong shape
    "missing": None,
    "truncated": '{"recipe": {"optim": {"lr": 0.0',
    "wrong-types": '{"recipe": [1, 2], "mlflow_run_id": 7}',
}


@pytest.mark.parametrize("record", list(RECORDS))
def test_a_changed_recipe_is_refused_by_the_checkpoints_own_recipe(tmp_path, capsys, record):
    out = tmp_path / "run"
    args = [str(TINY), f"output_dir={out}", "trainer.mlflow.enabled=false"]
    trained = load_recipe(TINY, args[1:]).config
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"recipe_yaml": OmegaConf.to_yaml(OmegaConf.structured(trained)), "state_dict": {}},
               out / "checkpoints" / checkpoint_name(2))
    if RECORDS[record] is not None:
        (out / "run.json").write_text(RECORDS[record])
    assert fit_main([*args, "optim.lr=0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lightbagel-fit: {out} holds a run of another recipe (optim.lr 0.001 -> 0.5)"), err
    assert "\n" not in err
