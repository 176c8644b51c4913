import itertools
from dataclasses import replace

import lightning as L
import pytest
import torch
from mixture_helpers import WordProcessor, write_source

from lightbagel.data.collate import size_groups
from lightbagel.data.datamodule import MixtureDataModule
from lightbagel.recipe.schema import DataConfig, PackingConfig, ResolutionConfig, SourceConfig, StageConfig


@pytest.fixture(scope="module")
def card(tmp_path_factory) -> DataConfig:
    root = tmp_path_factory.mktemp("resume")
    # Three image sizes (three buckets), edits and t2i, small shuffle blocks and shards, a stage
    # switch: the state to restore includes half-filled buckets and cursors inside blocks.
    return DataConfig(
        card="test", source="webdataset", seed=3, batch_size=6, shuffle_buffer=7,
        sources=[
            SourceConfig(name="a", urls=write_source(root / "a", "a", 50, per_shard=9, edit_every=3), weight=2.0),
            SourceConfig(name="b", urls=write_source(root / "b", "b", 30, per_shard=7, size=(32, 16)), weight=1.0),
            SourceConfig(name="c", urls=write_source(root / "c", "c", 20, per_shard=5, size=(16, 32)), weight=1.0),
        ],
        stages=[StageConfig(start_step=9, weights={"b": 1.0, "c": 3.0})],
        resolution=ResolutionConfig(vae_min_short=16, vae_max_long=32, vit_min_short=16, vit_max_long=16,
                                    vit_multiple=8),
        packing=PackingConfig(token_budget=60, max_wait=20),
    )


def module(cfg: DataConfig, workers: int, **kw) -> MixtureDataModule:
    dm = MixtureDataModule(replace(cfg, num_workers=workers), WordProcessor(), vae_multiple=8, **kw)
    dm.setup("fit")
    return dm


def consume(dm: MixtureDataModule, n: int) -> list[list[str]]:
    """Keys of the next ``n`` batches, consumed as the training loop would."""
    loader = iter(dm.train_dataloader())
    keys = []
    for batch in itertools.islice(loader, n):
        dm.on_before_batch_transfer(batch, 0)
        keys.append(batch.data_state["keys"])
    return keys


@pytest.mark.parametrize("layout,workers,stop", [("padded", 0, 5), ("padded", 2, 5), ("padded", 2, 12),
                                                 ("packed", 0, 5), ("packed", 2, 9)])
def test_resume_continues_with_the_exact_next_samples(card, layout, workers, stop):
    """Padded batches hold one image size (a bucket per size); packed rows every size (one buffer)."""
    card = replace(card, packing=replace(card.packing, layout=layout))
    total = 16
    uninterrupted = consume(module(card, workers), total)
    first = module(card, workers)
    before = consume(first, stop)
    resumed = module(card, workers)
    # Through torch.save / weights_only load, as a Lightning checkpoint stores it.
    resumed.load_state_dict(_roundtrip(first.state_dict()))
    after = consume(resumed, total - stop)
    assert before + after == uninterrupted
    assert resumed.consumed == total
    assert len(set(map(len, uninterrupted))) > 1  # the token budget varied the batch size
    assert any(role and role["pending"] for role in first.state_dict()["ranks"][0]["roles"])


def test_packed_rows_mix_image_sizes_and_padded_batches_do_not(card):
    sizes = {}
    for layout in ("packed", "padded"):
        dm = module(replace(card, packing=replace(card.packing, layout=layout)), 0)
        batches = list(itertools.islice(iter(dm.train_dataloader()), 8))
        sizes[layout] = [{tuple(g.target.shape[-2:]) for g in size_groups(b)} for b in batches]
    assert max(map(len, sizes["packed"])) == 3 and max(map(len, sizes["padded"])) == 1


def _roundtrip(state: dict) -> dict:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_resume_with_other_worker_count_is_a_clear_error(card):
    state = module(card, 2).state_dict()
    with pytest.raises(ValueError, match="data.num_workers=2"):
        module(card, 0).load_state_dict(state)


class KeyRecorder(L.LightningModule):
    """A one-parameter model that records the sample keys of every step it trains on."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[str]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch.data_state["keys"])
        return (self.w * size_groups(batch)[0].target.mean()).pow(2).sum() + self.w.sum() * 0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(card, tmp_path, max_steps: int, ckpt=None) -> KeyRecorder:
    model = KeyRecorder()
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, enable_checkpointing=False)
    trainer.fit(model, datamodule=module(card, 2), ckpt_path=ckpt, weights_only=True if ckpt else None)
    if ckpt is None:
        trainer.save_checkpoint(tmp_path / f"step{max_steps}.ckpt")
    return model


def test_lightning_checkpoint_resumes_the_stream(card, tmp_path):
    whole = _fit(card, tmp_path / "whole", 10).seen
    _fit(card, tmp_path / "part", 4)
    rest = _fit(card, tmp_path / "rest", 10, ckpt=str(tmp_path / "part" / "step4.ckpt")).seen
    assert len(whole) == 10 and rest == whole[4:]
