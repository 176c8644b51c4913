"""NaN/inf guard, EMA arithmetic, and LoRA + EMA under FSDP2 exported through lightbagel-export."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from lightbagel.data.collate import Collator
from lightbagel.shapes.heldout import validation_samples
from lightbagel.training.checkpointing import AtomicCheckpoint, complete_checkpoints
from lightbagel.training.ema import EMAWeights
from lightbagel.training.module import LightBagelModule
from lightbagel.training.nan_guard import NonFiniteGuard, NonFiniteLossError
from tests.training.loaders import ResumableLoader


def test_non_finite_losses_are_skipped_counted_and_stop_with_a_checkpoint(tiny_recipe, tmp_path):
    module = LightBagelModule(tiny_recipe.config)
    with torch.no_grad():
        module.model.gen.dit.proj_out.weight.fill_(float("nan"))
    batches = [Collator(module.model.und.processor, 32)(validation_samples(2, 32, seed=k)) for k in range(5)]
    checkpoint = AtomicCheckpoint(tmp_path / "ckpt", every_n_steps=100)
    trainer = L.Trainer(accelerator="cpu", max_steps=5, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        callbacks=[checkpoint, NonFiniteGuard(checkpoint, max_in_row=3)])
    with pytest.raises(NonFiniteLossError, match="NaN/inf for 3 steps in a row"):
        trainer.fit(module, train_dataloaders=ResumableLoader(batches))
    assert module.nonfinite_total == 3
    assert [p.name for p in complete_checkpoints(tmp_path / "ckpt")] == [f"step-{trainer.global_step:08d}.ckpt"]
    assert torch.isnan(module.model.gen.dit.proj_out.weight).all()  # no step was taken on NaN


def test_ema_moves_each_weight_towards_the_current_one():
    model = nn.Linear(2, 2)
    model.bias.requires_grad_(False)
    ema = EMAWeights(model, decay=0.75)
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(4.0)
    ema.update(model)
    assert [n for n, _ in ema.items()] == ["weight"]  # frozen weights are not averaged
    torch.testing.assert_close(dict(ema.items())["weight"], before + 1.0)


def test_lora_and_ema_under_fsdp2_export_merged_weights_and_adapters(tmp_path):
    from lightbagel.cli.export import main
    from lightbagel.model_folder import load_exported

    from .test_distributed import launch

    launch(tmp_path / "run", "--steps", "2", "trainer.lora.enabled=true", "trainer.lora.rank=2",
           "trainer.ema.enabled=true", "trainer.ema.decay=0.5")
    assert main([str(tmp_path / "run" / "checkpoints"), str(tmp_path / "export")]) == 0
    for sub in ("", "ema"):
        model = load_exported(tmp_path / "export" / sub)
        assert not any(".lora_" in n for n in model.state_dict())
    assert (tmp_path / "export" / "adapter" / "adapter_model.safetensors").is_file()
    merged = load_exported(tmp_path / "export").gen.dit.blocks[0].attn1.to_q.weight
    averaged = load_exported(tmp_path / "export" / "ema").gen.dit.blocks[0].attn1.to_q.weight
    assert not torch.equal(merged, averaged)  # EMA lags the trained adapters
