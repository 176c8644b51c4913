import itertools
import json
from pathlib import Path

import pytest
import webdataset as wds
from mixture_helpers import make_plan, png, write_source

from lightbagel.data.pipeline import MixtureDataset, SlotWorker
from lightbagel.errors import DataError
from lightbagel.recipe.schema import ResolutionConfig

GOOD = [f"good{i:03d}" for i in range(12)]


def _write(path: Path, samples: list[dict]) -> str:
    with wds.TarWriter(str(path), mtime=0) as writer:
        for s in samples:
            writer.write(s)
    return str(path)


def t2i(key: str, image: bytes | None = None) -> dict:
    return {"__key__": key, "target.png": image if image is not None else png((16, 16)), "caption.txt": "a square"}


@pytest.fixture(scope="module")
def corrupt_source(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("corrupt")
    good = _write(root / "good.tar", [t2i(k) for k in GOOD])
    bad = _write(root / "bad.tar", [
        t2i("decode000", b"\x89PNG not really a png"),
        {"__key__": "missing000", "target.png": png((16, 16))},  # no caption
        t2i("oversize000", png((200, 200))),
        {**t2i("badtask000"), "task.txt": "vqa"},
        {"__key__": "und000", "task.txt": "und", "image.png": png((16, 16)),
         "conversation.json": '[{"role": "user", "content": "<image> what is it"}]'},
    ])
    whole = Path(_write(root / "cut-src.tar", [t2i(f"cut{i:03d}") for i in range(6)])).read_bytes()
    truncated = root / "truncated.tar"
    truncated.write_bytes(whole[: len(whole) // 2])
    return [good, bad, str(truncated), str(root / "absent.tar")]


def test_each_kind_of_bad_input_is_skipped_and_counted(corrupt_source):
    res = ResolutionConfig(vae_min_short=16, vae_max_long=32, vit_min_short=16, vit_max_long=16,
                           vit_multiple=8, max_image_pixels=10_000)
    plan = make_plan({"s": (corrupt_source, 1.0)}, batch_size=4, block_size=64, resolution=res)
    keys, state = [], None
    for batch in itertools.islice(iter(MixtureDataset(plan)), 12):  # 48 samples: two epochs and more
        keys += batch.data_state["keys"]
        state = batch.data_state
    assert set(GOOD) <= set(keys)
    assert {k[:3] for k in keys} <= {"goo", "cut"}  # only good or intact-before-the-cut samples
    counts = state["skipped"]["s"]
    for reason in ("unreadable_shard", "truncated_shard", "decode", "missing_key", "oversize", "bad_task",
                   "unsupported_task"):
        assert counts.get(reason, 0) >= 1, (reason, counts)
    # Shards are counted when read, samples when drawn (shard order changes per pass): at most
    # once per pass each, give or take the pass under way.
    passes = counts["unreadable_shard"]
    reasons = ("decode", "missing_key", "oversize", "bad_task", "truncated_shard")
    assert all(counts[r] <= passes + 1 for r in reasons), counts


def test_a_source_with_no_readable_sample_is_a_clear_error(tmp_path):
    plan = make_plan({"empty": ([str(tmp_path / "absent.tar")], 1.0)})
    with pytest.raises(DataError, match="data source 'empty': no readable samples"):
        SlotWorker(plan, 0, 1).next_batch(0)


def _truncated_passes(shard: str, slots: int, passes: int) -> dict[str, int]:
    """Skip counts summed over `slots` readers of one shard (split by sample), each reading `passes`
    passes and one sample more (the reader meets the cut only when asked past the last good sample)."""
    from lightbagel.data.skips import SkipCounter
    from lightbagel.data.streams import Slot, SourceStream, read_shard

    good = sum(1 for _ in read_shard(shard, None))
    total: dict[str, int] = {}
    for index in range(slots):
        counter = SkipCounter()
        stream = SourceStream("s", [shard], Slot(index, slots), seed=0, block_size=1, counter=counter)
        for _ in range(len(range(index, good, slots)) * passes + 1):
            stream.next()
        for reason, n in counter.counts.items():
            total[reason] = total.get(reason, 0) + n
    return total


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_a_truncated_shard_counts_once_per_pass_however_many_readers_share_it(tmp_path, slots):
    (shard,) = write_source(tmp_path, "s", 10, per_shard=10)
    whole = Path(shard).read_bytes()
    Path(shard).write_bytes(whole[: len(whole) * 2 // 3])
    assert _truncated_passes(shard, slots, passes=3) == {"truncated_shard": 3}


def test_the_skip_warning_says_what_it_counts(caplog):
    import logging

    from lightbagel.data.datamodule import MixtureDataModule
    from lightbagel.data.skips import SkipCounter

    dm = object.__new__(MixtureDataModule)  # only the skip bookkeeping is exercised
    dm.skipped, dm.roles = SkipCounter(), {0: {"skipped": {"s": {"truncated_shard": 2}}}}
    with caplog.at_level(logging.WARNING, logger="lightbagel.data.datamodule"):
        dm._update_skipped(warn=True)
    assert caplog.messages == ["data: skipped 2 more of s/truncated_shard (2 so far; each bad sample or shard "
                               "counts once per pass over the data)"]


def _batched_keys(plan, batches: int) -> tuple[list[str], dict]:
    keys, state = [], None
    for batch in itertools.islice(iter(MixtureDataset(plan)), batches):
        keys += batch.data_state["keys"]
        state = batch.data_state
    return keys, state["skipped"]["s"]


def und(key: str, content: str, images: int = 1) -> dict:
    pictures = {f"image_{i}.png": png((16, 16)) for i in range(images)}
    turns = [{"role": "user", "content": content}, {"role": "assistant", "content": "a"}]
    return {"__key__": key, "task.txt": "und", **pictures, "conversation.json": json.dumps(turns)}


def test_an_und_sample_with_more_image_marks_than_images_is_skipped_and_counted(tmp_path):
    # The good ones are text-only: the word-per-token stand-in processor cannot mark answers around images.
    shard = _write(tmp_path / "und.tar", [und(f"good{i}", "what is it", images=0) for i in range(6)] +
                   [und("marks000", "<image> and <image> and <image>", images=2)])
    plan = make_plan({"s": ([shard], 1.0)}, batch_size=2, block_size=8, tasks=("und",))
    keys, counts = _batched_keys(plan, 8)  # more than one pass: the bad sample is drawn, never batched
    assert "marks000" not in keys and {f"good{i}" for i in range(6)} <= set(keys)
    assert counts.get("missing_key", 0) >= 1, counts


@pytest.mark.parametrize(("budget", "max_tokens"), [(64, None), (None, 50)])
def test_a_text_longer_than_the_token_budget_or_the_models_limit_is_skipped_and_counted(tmp_path, budget,
                                                                                        max_tokens):
    long = {"__key__": "long000", "target.png": png((16, 16)), "caption.txt": "red " * 25_000}  # 100k characters
    shard = _write(tmp_path / "t2i.tar", [t2i(k) for k in GOOD[:6]] + [long])
    plan = make_plan({"s": ([shard], 1.0)}, batch_size=2, block_size=8, token_budget=budget)
    plan.collator.processor.max_tokens = max_tokens
    keys, counts = _batched_keys(plan, 8)
    assert "long000" not in keys and set(GOOD[:6]) <= set(keys)
    assert counts.get("too_long", 0) >= 1, counts
