import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightbagel import shapes
from lightbagel.data.skips import SkipCounter
from lightbagel.shapes.shards import write_shapes_shards
from tests.shapes.shards_reader import read_shapes_samples

N, SIZE, PER_SHARD = 50, 32, 20


@pytest.fixture(scope="module")
def shard_paths(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("shapes")
    return write_shapes_shards(out, N, SIZE, seed=0, samples_per_shard=PER_SHARD)


def read_all(urls, **kw) -> tuple[list[dict], SkipCounter]:
    counter = SkipCounter()
    return list(read_shapes_samples(urls, counter=counter, **kw)), counter


def rewrite_tar(src: str, dst: Path, edit) -> str:
    """Copy a tar member by member; ``edit(name, data)`` returns new bytes or None to drop."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for member in tin.getmembers():
            data = edit(member.name, tin.extractfile(member).read())
            if data is not None:
                member.size = len(data)
                tout.addfile(member, io.BytesIO(data))
    return str(dst)


def test_writes_shards_and_manifest(shard_paths):
    out = Path(shard_paths[0]).parent
    assert [Path(p).name for p in shard_paths] == [f"shapes-{i:06d}.tar" for i in range(3)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shards"] == [Path(p).name for p in shard_paths]
    assert manifest["params"]["num_samples"] == N and manifest["params"]["seed"] == 0
    assert sorted(os.listdir(out)) == ["manifest.json", *sorted(manifest["shards"])]  # no temp left


def test_read_back_fields(shard_paths):
    records, counter = read_all(shard_paths)
    assert counter.total == 0 and counter.as_dict() == {}
    assert len(records) == N and len({r["key"] for r in records}) == N
    tasks = {r["task"] for r in records}
    assert tasks == {"t2i", "edit"}
    for r in records:
        assert set(r) == {"key", "task", "text", "target", "source", "meta"}
        assert isinstance(r["target"], Image.Image) and r["target"].mode == "RGB"
        assert r["target"].size == (SIZE, SIZE)
        target = shapes.Scene.from_dict(r["meta"]["target_scene"])
        assert np.array_equal(np.asarray(r["target"]), np.asarray(shapes.render(target, SIZE)))
        if r["task"] == "t2i":
            assert r["source"] is None and r["text"] == shapes.caption(target)
        else:
            source = shapes.Scene.from_dict(r["meta"]["source_scene"])
            assert np.array_equal(np.asarray(r["source"]), np.asarray(shapes.render(source, SIZE)))
            assert r["text"].split()[0] in {"make", "turn", "remove", "add"}


def test_deterministic_for_a_seed(shard_paths, tmp_path):
    again = write_shapes_shards(tmp_path / "a", N, SIZE, seed=0, samples_per_shard=PER_SHARD)
    for a, b in zip(shard_paths, again):
        assert Path(a).read_bytes() == Path(b).read_bytes()
    other = write_shapes_shards(tmp_path / "b", N, SIZE, seed=1, samples_per_shard=PER_SHARD)
    assert Path(other[0]).read_bytes() != Path(shard_paths[0]).read_bytes()


def test_second_call_reuses_cache_and_new_params_rewrite(tmp_path):
    first = write_shapes_shards(tmp_path, 30, 16, samples_per_shard=10)
    stamps = [os.stat(p).st_mtime_ns for p in first]
    assert write_shapes_shards(tmp_path, 30, 16, samples_per_shard=10) == first
    assert [os.stat(p).st_mtime_ns for p in first] == stamps
    changed = write_shapes_shards(tmp_path, 30, 16, samples_per_shard=30)
    assert len(changed) == 1 and sorted(tmp_path.glob("shapes-*.tar")) == [Path(changed[0])]
    assert len(read_all(changed)[0]) == 30


def test_task_weights(tmp_path):
    only_t2i = write_shapes_shards(tmp_path / "t", 20, 16, task_weights={"t2i": 1.0})
    assert {r["task"] for r in read_all(only_t2i)[0]} == {"t2i"}
    only_edit = write_shapes_shards(tmp_path / "e", 20, 16, task_weights={"edit": 1.0})
    assert {r["task"] for r in read_all(only_edit)[0]} == {"edit"}
    with pytest.raises(ValueError):
        write_shapes_shards(tmp_path / "x", 20, 16, task_weights={"vqa": 1.0})


def test_shuffle_buffer(shard_paths):
    stored = [r["key"] for r in read_all(shard_paths)[0]]
    shuffled = [r["key"] for r in read_all(shard_paths, shuffle_buffer=25, seed=3)[0]]
    assert shuffled != stored and sorted(shuffled) == sorted(stored)
    assert shuffled == [r["key"] for r in read_all(shard_paths, shuffle_buffer=25, seed=3)[0]]


def header_offsets(path: str) -> list[int]:
    with tarfile.open(path) as tar:
        return [member.offset for member in tar.getmembers()]


@pytest.mark.parametrize("keep", [0.5, 0.25, 0.8])
def test_truncated_shard_is_skipped_and_counted(shard_paths, tmp_path, keep):
    data = Path(shard_paths[0]).read_bytes()
    offsets = header_offsets(shard_paths[0])
    # Cut inside member data, and exactly at a member header: Python's tarfile
    # takes the latter for a normal end of archive.
    for cut in (int(len(data) * keep), offsets[int(len(offsets) * keep)]):
        truncated = tmp_path / f"cut{cut}.tar"
        truncated.write_bytes(data[:cut])
        records, counter = read_all([str(truncated), shard_paths[1]])
        assert PER_SHARD <= len(records) < 2 * PER_SHARD
        assert counter.counts.get("shard", 0) >= 1, cut
        assert all(r["target"].size == (SIZE, SIZE) for r in records)


def test_garbage_png_and_missing_target_are_skipped(shard_paths, tmp_path):
    def corrupt(name: str, data: bytes) -> bytes | None:
        if name == "sample00000003.target.png":
            return b"this is not a png"
        if name == "sample00000005.target.png":
            return None
        return data

    bad = rewrite_tar(shard_paths[0], tmp_path / "bad.tar", corrupt)
    records, counter = read_all([bad])
    keys = {r["key"] for r in records}
    assert len(records) == PER_SHARD - 2 and not keys & {"sample00000003", "sample00000005"}
    assert counter.as_dict() == {"decode": 1, "missing_key": 1} and counter.total == 2


def test_missing_shard_is_counted(shard_paths, tmp_path):
    records, counter = read_all([str(tmp_path / "absent.tar"), shard_paths[2]])
    assert len(records) == N - 2 * PER_SHARD and counter.as_dict() == {"shard": 1}


def keep_list(batch: list[dict]) -> list[dict]:
    return batch


def test_dataloader_workers_split_shards(shard_paths):
    loader = torch.utils.data.DataLoader(
        read_shapes_samples(shard_paths), batch_size=8, num_workers=2, collate_fn=keep_list
    )
    keys = [r["key"] for batch in loader for r in batch]
    assert len(keys) == N and len(set(keys)) == N  # each shard read by exactly one worker
