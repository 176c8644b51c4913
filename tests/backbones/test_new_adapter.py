"""Adding a backbone: an adapter module of one's own, one card, one `register` call, and nothing
else (docs/backbones.md); the fp32 list and the block layout come from the adapter's class."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from lightbagel.data.collate import Collator
from lightbagel.recipe import load_recipe
from lightbagel.registry import GENERATION
from lightbagel.shapes.heldout import validation_samples
from lightbagel.training.module import LightBagelModule
from lightbagel.training.sharding import model_units
from tests.backbones.toy_adapter import ToyWanAdapter, build_toy_wan

REPO = Path(__file__).resolve().parents[2]


def test_an_adapter_registered_from_a_test_module_with_one_card_trains_a_step(tmp_path, monkeypatch):
    card = (REPO / "components/generation/tiny_wan_pixel.yaml").read_text()
    card = card.replace("adapter: wan\n", "adapter: toy_wan\n")
    (tmp_path / "components/generation").mkdir(parents=True)
    (tmp_path / "components/generation/tiny_toy_wan.yaml").write_text(card)
    monkeypatch.chdir(tmp_path)  # ./components is searched before the shipped cards
    GENERATION.register("toy_wan")(build_toy_wan)
    try:
        train_one_step()
    finally:  # the registry has no unregister (a process's names are fixed); other tests list every name
        GENERATION._builders.pop("toy_wan")


def train_one_step() -> None:
    recipe = load_recipe(REPO / "recipes/tiny.yaml", ["generation=tiny_toy_wan", "generation.freeze=true",
                                                     "trainer.precision=bf16-mixed"])
    module = LightBagelModule(recipe.config)
    assert type(module.model.gen) is ToyWanAdapter
    module.configure_model()
    dit = module.model.gen.dit
    # Frozen DiT weights are stored in bf16, but for what the class keeps in fp32.
    assert dit.patch_embedding.weight.dtype == torch.float32  # the entry only ToyWanAdapter declares
    assert dit.blocks[0].ffn.net[0].proj.weight.dtype == torch.bfloat16
    assert [len(u.modules) for u in model_units(module.model)][1] == len(dit.blocks)

    batch = Collator(module.model.und.processor, 32)(validation_samples(2, 32, seed=3))
    before = [p.detach().clone() for p in module.model.fusion.parameters()]
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module, train_dataloaders=DataLoader([batch], batch_size=None, collate_fn=lambda b: b))
    assert trainer.global_step == 1
    assert any(not torch.equal(p, b) for p, b in zip(module.model.fusion.parameters(), before))
