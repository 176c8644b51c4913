"""Packed rows (src/lightbagel/packing.py) compute what padded rows do, sample by sample."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lightbagel.data.collate import Collator, MixedBatch
from lightbagel.model import build_model
from lightbagel.packing import LAYOUTS, pack, row_velocities
from lightbagel.recipe.schema import ObjectiveConfig
from lightbagel.shapes.heldout import validation_samples
from lightbagel.training.module import drop_conditions
from tests.test_model import _perturb_fusion

# Every condition dropped with probability 1/2: `uniform` draws below 0.5 drop.
HALF = ObjectiveConfig(text_dropout=0.5, vit_dropout=0.5, vae_dropout=0.5)
KEEP_ALL = torch.ones(8, 3)
# Per sample (text, ViT, VAE): T2I kept, T2I text dropped, edit ViT dropped, edit VAE dropped,
# edit all dropped, T2I kept, edit text dropped, edit kept.
DROPS = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0], [0, 0, 0], [1, 1, 1], [0, 1, 1], [1, 1, 1.]])


def _batch(model, tasks: str, size: int = 16):
    """Shapes-world samples, `tasks` one letter per sample: t (T2I) or e (edit)."""
    pool = validation_samples(2 * len(tasks), size, seed=7)
    t2i, edit = pool[0::2], pool[1::2]
    samples = [t2i.pop() if task == "t" else edit.pop() for task in tasks]
    return Collator(model.und.processor, size)(samples)


def _inputs(model, batch, uniform: torch.Tensor, seed: int = 0) -> tuple:
    """A batch's model inputs (und, noisy, t, sources, source_valid, source_order), as the trainer makes them."""
    und, source_valid = drop_conditions(batch, HALF, uniform[:len(batch)])
    vae = model.gen.vae
    x0 = vae.encode(batch.target)
    sources = vae.encode(batch.source[source_valid]) if bool(source_valid.any()) else None
    g = torch.Generator().manual_seed(seed)
    noise, t = torch.randn(x0.shape, generator=g), torch.rand(len(batch), generator=g)
    noisy = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
    return und, noisy, t, sources, source_valid, batch.source_order


def _velocities(model, batch, uniform: torch.Tensor, layout: str, seed: int = 0) -> torch.Tensor:
    """(B, per_slot, P) target-token velocities of one layout."""
    return LAYOUTS[layout](model, *_inputs(model, batch, uniform, seed))


def _mixed_batch(model) -> MixedBatch:
    """Samples of three target sizes, interleaved: 16 x 16 (T2I and edits), 24 x 16 and 12 x 20."""
    samples = validation_samples(10, 16, seed=3)
    for i, sample in enumerate(samples):
        size = [(16, 16), (24, 16), (12, 20)][i % 3]
        samples[i] = {**sample, **{k: sample[k].resize(size) for k in ("target", "source") if sample[k] is not None}}
    return Collator(model.und.processor, 16)(samples)


@pytest.fixture
def fused(tiny_model):
    _perturb_fusion(tiny_model)  # trained fusion blocks: the streams really mix
    return tiny_model


@pytest.mark.parametrize("tasks, uniform", [("tttt", KEEP_ALL), ("eeee", KEEP_ALL), ("tetete", KEEP_ALL),
                                            ("tteeetee", DROPS), ("tt", 1 - KEEP_ALL)],
                         ids=["t2i", "edit", "mixed", "dropout", "every_und_token_dropped"])
@torch.no_grad()
def test_packed_velocities_equal_padded_per_sample(fused, tasks, uniform):
    batch = _batch(fused, tasks)
    packed = _velocities(fused, batch, uniform, "packed")
    padded = _velocities(fused, batch, uniform, "padded")
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)
    # The comparison can fail: samples differ, so mixing them up would show.
    assert not torch.allclose(padded[0], padded[1], atol=1e-3)


@torch.no_grad()
def test_packed_velocities_equal_padded_without_und_writeback(tiny_recipe):
    """Fusion blocks then attend with the gen rows of the joint mask only (`OrderMask.rows`)."""
    recipe = replace(tiny_recipe.config, fusion=replace(tiny_recipe.config.fusion, und_writeback=False))
    model = build_model(recipe).eval()
    _perturb_fusion(model)
    batch = _batch(model, "tteeetee")
    packed, padded = (_velocities(model, batch, DROPS, layout) for layout in LAYOUTS)
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_packed_row_holds_only_real_tokens(fused):
    batch = _batch(fused, "tteeetee")
    und, source_valid = drop_conditions(batch, HALF, DROPS)
    latents = torch.zeros(len(batch), 48, 4, 4)
    packed = pack(und, latents, torch.rand(len(batch)), latents[source_valid], source_valid, batch.source_order)
    assert len(packed.und_rows) == int(und.valid.sum()) < int(und.attention_mask.sum())
    # One slot per target and one per visible source: 8 targets; edits 2, 6 and 7 show theirs.
    assert packed.slot_sample.tolist() == [0, 1, 2, 2, 3, 4, 5, 6, 6, 7, 7]
    assert packed.gen.latents.shape[2] == 11 and packed.targets.tolist() == [0, 1, 3, 4, 5, 6, 8, 10]


def _layout_losses(tiny_recipe, make_batch) -> tuple:
    """Per layout: (loss, target tokens) and the gradients of one batch, from the same weights and
    per-sample seeds; also the last module and batch."""
    from lightbagel.training.module import LightBagelModule

    grads, losses = {}, {}
    for layout in LAYOUTS:
        recipe = replace(tiny_recipe.config, data=replace(tiny_recipe.config.data, packing=replace(
            tiny_recipe.config.data.packing, layout=layout)))
        module = LightBagelModule(recipe)
        _perturb_fusion(module.model)
        batch = make_batch(module.model)
        loss, n_tokens = module.flow_matching_loss(batch, seeds=list(range(len(batch))))
        loss.backward()
        losses[layout] = (loss.detach(), n_tokens)
        grads[layout] = {n: p.grad for n, p in module.model.named_parameters() if p.grad is not None}
    return losses, grads, module, batch


def _assert_layouts_agree(losses: dict, grads: dict) -> None:
    assert losses["packed"][1] == losses["padded"][1]
    torch.testing.assert_close(losses["packed"][0], losses["padded"][0], rtol=1e-5, atol=1e-6)
    assert grads["packed"].keys() == grads["padded"].keys() and len(grads["packed"]) > 10
    for name, grad in grads["packed"].items():
        torch.testing.assert_close(grad, grads["padded"][name], rtol=1e-4, atol=1e-6, msg=name)


def test_packed_loss_and_gradients_equal_padded(tiny_recipe):
    _assert_layouts_agree(*_layout_losses(tiny_recipe, lambda model: _batch(model, "tetteett"))[:2])


@torch.no_grad()
def test_mixed_size_row_gives_the_velocities_of_padded_batches(fused):
    """One packed row of three image sizes (parts embedded apart, joined token by token) computes
    each sample's velocity as padded batches of one size each do."""
    batch = _mixed_batch(fused)
    assert [tuple(g.target.shape[-2:]) for g in batch.groups] == [(16, 16), (16, 24), (20, 12)]
    assert len(batch) == 10 and any(bool(g.has_source.any()) for g in batch.groups)
    inputs = [_inputs(fused, group, DROPS.roll(i, 0), seed=i) for i, group in enumerate(batch.groups)]
    packed, padded = (row_velocities(fused, inputs, layout) for layout in ("packed", "padded"))
    assert [v.shape[1] for v in packed] == [16, 24, 15]  # DiT tokens per target: 4 px per token side
    for a, b in zip(packed, padded):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_mixed_size_loss_and_gradients_equal_padded(tiny_recipe):
    """The loss of a row of several sizes is the mean over every target token of the batch: the
    padded batches' losses weighted by their tokens, with the same per-sample draws."""
    losses, grads, module, batch = _layout_losses(tiny_recipe, _mixed_batch)
    with torch.no_grad():  # size by size, each group's own seeds
        first, parts = 0, []
        for group in batch.groups:
            parts.append(module.flow_matching_loss(group, seeds=list(range(first, first + len(group)))))
            first += len(group)
    assert losses["padded"][1] == sum(n for _, n in parts) == 4 * 16 + 3 * 24 + 3 * 15
    by_parts = sum(loss * n for loss, n in parts) / losses["padded"][1]
    torch.testing.assert_close(losses["packed"][0], by_parts, rtol=1e-5, atol=1e-6)
    _assert_layouts_agree(losses, grads)


def test_vae_encodes_only_real_images(tiny_recipe):
    from lightbagel.training.module import LightBagelModule

    module = LightBagelModule(tiny_recipe.config)
    batch = _batch(module.model, "tetete")
    batch_sizes, vae = [], module.model.gen.vae
    encode = vae.encode
    vae.encode = lambda images: (batch_sizes.append(images.shape[0]), encode(images))[1]
    module.flow_matching_loss(batch, seeds=list(range(len(batch))))
    # The 6 targets, then the 3 edits' sources; no empty source slot for a T2I sample.
    assert batch_sizes == [6, 3]


def test_killed_packed_run_resumes_onto_the_uninterrupted_runs_weights(tmp_path, capsys):
    """`lightbagel-fit` end to end with `data.packing.layout=packed`, SIGKILLed after its step-4
    checkpoint and resumed: it trains on the exact next samples, so its final weights equal an
    uninterrupted packed run's bit for bit (the same kernels on the same inputs; packed against padded
    rows is tested per step above, at a tolerance)."""
    import os
    import subprocess
    import sys

    from lightbagel.cli.fit import main as fit_main
    from tests.training.test_faults import KILLED, fit_args, same_weights

    data = tmp_path / "data"
    assert fit_main(fit_args(tmp_path / "ref", data) + ["data.packing.layout=packed"]) == 0
    packed = fit_args(tmp_path / "run", data) + ["data.packing.layout=packed"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(KILLED), "4", *packed], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    capsys.readouterr()
    assert fit_main(packed) == 0
    out = capsys.readouterr().out
    assert "step 5/6" in out and "step 1/6" not in out  # it did resume, after step 4
    same_weights(tmp_path / "ref", tmp_path / "run")


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_a_mixed_size_batch_is_weighted_by_every_target_token_it_holds(tiny_recipe, monkeypatch):
    """Under the token-weighted loss (docs/distributed.md) a rank contributes the target tokens of
    its whole batch, every image size together: what backward sees is its loss times that weight."""
    import lightbagel.training.module as training_module

    seen = {}

    def weight(tokens, device):
        seen["tokens"] = tokens
        return 0.5

    monkeypatch.setattr(training_module, "global_token_weight", weight)
    module = training_module.LightBagelModule(tiny_recipe.config)
    batch = _mixed_batch(module.model)
    scaled = module.training_step(batch, 0)
    loss, _ = module.weighted_loss(batch, 0)  # the same per-sample keys: the same loss
    assert seen["tokens"] == 4 * 16 + 3 * 24 + 3 * 15
    torch.testing.assert_close(scaled, 0.5 * loss, rtol=0, atol=0)


def test_batch_flops_count_the_tokens_each_layout_computes(tiny_recipe):
    from lightbagel.training.flops import train_flops
    from lightbagel.training.module import LightBagelModule

    for layout in LAYOUTS:
        recipe = tiny_recipe.config
        module = LightBagelModule(replace(recipe, data=replace(recipe.data, packing=replace(
            recipe.data.packing, layout=layout))))
        module.configure_model()
        # Two edits among four samples: packed rows hold each edit's source (sum), padded rows give every
        # sample a source slot once any is an edit (any); prompts of unequal length.
        batch = _batch(module.model, "ttee")
        per_slot = module.model.gen.tokens_per_slot(4, 4)
        mask = batch.und.attention_mask
        und, gen = (int(mask.sum()), 6 * per_slot) if layout == "packed" else (mask.numel(), 8 * per_slot)
        assert int(mask.sum()) < mask.numel()
        assert module._batch_flops(batch) == train_flops(module._weights, und, gen)


@torch.no_grad()
def test_packed_rows_under_flex_equal_padded_rows(fused):
    """The GPU path's rule: a packed row's `mask_mod` (fusion/flex.py; samples do not ascend along the
    joint row [und of every sample; gen of every sample]) gives the padded dense velocities. Eager
    flex applies the `mask_mod` everywhere; tests/fusion/test_flex.py checks the tile classes."""
    batch = _batch(fused, "tteeetee")
    padded = _velocities(fused, batch, DROPS, "padded")
    fused.attention = "flex"  # eager flex_attention: forward only on CPU
    torch.testing.assert_close(_velocities(fused, batch, DROPS, "packed"), padded, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_packed_x0_prediction_reads_each_slot_like_padded(fused):
    """`objective.prediction: sample` turns the head's x0 into a velocity with each slot's own t."""
    fused.prediction = "sample"
    batch = _batch(fused, "tetete")
    packed = _velocities(fused, batch, KEEP_ALL, "packed")
    torch.testing.assert_close(packed, _velocities(fused, batch, KEEP_ALL, "padded"), rtol=1e-5, atol=1e-5)
    fused.prediction = "velocity"
    assert not torch.allclose(packed, _velocities(fused, batch, KEEP_ALL, "packed"), atol=1e-3)
