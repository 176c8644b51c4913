"""Sampling: the understanding cache changes nothing but speed; CFG, interval, renorm, seeds."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lightbagel.inference.guidance import guide
from lightbagel.inference.sampler import (
    Conditioning,
    SamplerConfig,
    condition_slots,
    sample,
    stack_branches,
    without_images,
    without_text,
)
from lightbagel.inputs import GenInputs, gen_inputs
from lightbagel.model import UndCache


def _perturb_fusion(model, seed: int = 0) -> None:
    """Trained fusion blocks are not zero: with zero-init the cache would be trivially right."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.fusion.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _conditioning(model, batch) -> Conditioning:
    sources = model.gen.vae.encode(batch.source)[:, None]
    return Conditioning(batch.und, sources, batch.has_source[:, None], batch.source_order[:, None])


def _model(tiny_recipe, prediction="velocity", **fusion):
    from lightbagel.model import build_model

    cfg = replace(tiny_recipe.config, fusion=replace(tiny_recipe.config.fusion, **fusion),
                  objective=replace(tiny_recipe.config.objective, prediction=prediction))
    model = build_model(cfg).eval()
    _perturb_fusion(model)
    return model


@pytest.mark.parametrize("writeback,prediction", [(True, "velocity"), (False, "velocity"), (True, "sample")])
def test_forward_generation_matches_forward(tiny_recipe, make_batch, writeback, prediction):
    model = _model(tiny_recipe, prediction, und_writeback=writeback)
    batch = make_batch(model)  # mixed: text-to-image and edits with a clean source slot
    cond = _conditioning(model, batch)
    noisy = torch.randn(len(batch), 48, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.full((len(batch),), 0.6)
    with torch.no_grad():
        ref = model(batch.und, cond.gen(noisy, t)).velocity
        out, cache = model.forward_with_cache(batch.und, cond.gen(torch.randn_like(noisy), t))
        cached = model.forward_generation(cond.gen(noisy, t), cache)
    assert cache.source is not None  # edits in the batch: the source slots' K/V are cached too
    n_target = model.gen.tokens_per_slot(8, 8)
    assert cached.shape[1] == n_target  # only the target slot ran
    torch.testing.assert_close(cached, ref[:, -n_target:], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out.velocity, ref)  # the cache pass itself saw other noise


@pytest.mark.parametrize("writeback", [True, False])
def test_cached_sampling_gives_the_same_image(tiny_recipe, make_batch, writeback):
    model = _model(tiny_recipe, und_writeback=writeback)
    batch = make_batch(model)
    cond = _conditioning(model, batch)
    base = SamplerConfig(steps=6, shift=3.0, text_guidance=4.0, image_guidance=1.5,
                         guidance_interval=(0.3, 1.0), renorm="global")
    seeds = [0, 1, 2, 3]
    with_cache = sample(model, cond, (len(batch), 48, 8, 8), base, seeds)
    without = sample(model, cond, (len(batch), 48, 8, 8), replace(base, use_cache=False), seeds)
    images = [model.gen.vae.decode(x) for x in (with_cache, without)]
    torch.testing.assert_close(images[0], images[1], rtol=1e-4, atol=1e-4)


def test_after_the_first_step_only_the_target_slot_runs(tiny_recipe, make_batch):
    """Edits with image guidance: every CFG branch's cache keeps the clean source K/V, so each later
    step computes the target's tokens alone (half the tokens of one source + target)."""
    model = _model(tiny_recipe)
    batch = make_batch(model)
    cond = _conditioning(model, batch)
    tokens = []
    model.gen.dit.proj_out.register_forward_hook(lambda m, args, out: tokens.append(out.shape[1]))
    cfg = SamplerConfig(steps=4, text_guidance=4.0, image_guidance=2.0, guidance_interval=(0.0, 1.0))
    sample(model, cond, (len(batch), 48, 8, 8), cfg, [0, 1, 2, 3])
    n_target = model.gen.tokens_per_slot(8, 8)
    assert tokens == [2 * n_target] + [n_target] * 3


def test_single_source_slots_match_training_layout(tiny_model, make_batch):
    batch = make_batch(tiny_model)
    src = tiny_model.gen.vae.encode(batch.source)
    noisy, t = torch.randn(len(batch), 48, 8, 8), torch.rand(len(batch))
    ours = condition_slots(noisy, t, src[:, None], batch.has_source[:, None], batch.source_order[:, None])
    ref = gen_inputs(noisy, t, src, batch.has_source, batch.source_order)
    for name in ("latents", "timesteps", "frame_pos", "valid", "order"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name))


def test_two_sources_get_consecutive_frames_and_target_after_them():
    noisy, t = torch.zeros(2, 4, 2, 2), torch.tensor([0.5, 0.5])
    sources = torch.ones(2, 2, 4, 2, 2)
    valid = torch.tensor([[True, True], [True, False]])
    gen = condition_slots(noisy, t, sources, valid, torch.tensor([[3, 7], [3, 0]]))
    assert gen.latents.shape == (2, 4, 3, 2, 2)
    assert gen.frame_pos.tolist() == [[0, 1, 2], [0, 1, 1]]
    assert gen.valid.tolist() == [[True, True, True], [True, False, True]]
    assert gen.timesteps[:, :2].abs().sum() == 0


def test_branches_hide_text_or_images(tiny_model, make_batch):
    batch = make_batch(tiny_model)
    cond = _conditioning(tiny_model, batch)
    no_text = without_text(batch.und)
    assert not no_text.valid[batch.und.segment == 1].any()
    assert no_text.valid[batch.und.segment == 2].all()
    no_img = without_images(cond)
    assert not no_img.und.valid[batch.und.segment == 2].any()
    assert no_img.und.valid[batch.und.segment == 1].all()
    assert not no_img.source_valid.any()
    both = stack_branches([cond, no_img])
    assert both.und.input_ids.shape[0] == 2 * len(batch)
    assert both.und.pixel_values.shape[0] == 2 * batch.und.pixel_values.shape[0]


def test_guidance_formula_and_renorm():
    cond, no_text, no_img = torch.full((1, 1, 1, 1), 2.0), torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    cfg = SamplerConfig(text_guidance=3.0, image_guidance=2.0, renorm=None)
    v = torch.stack([cond, no_text, no_img])
    text_only = guide(v[:2], cfg, True, False, torch.ones(1))
    assert float(text_only) == pytest.approx(6.0)  # 0 + 3 * (2 - 0)
    both = guide(v, cfg, True, True, torch.full((1,), 2.0))
    assert float(both) == pytest.approx(11.0)  # 1 + 2 * (6 - 1)
    renormed = guide(v, replace(cfg, renorm="global"), True, True, torch.full((1,), 2.0))
    assert float(renormed) == pytest.approx(2.0)  # rescaled to the conditional norm
    no_source = guide(v, cfg, True, True, torch.ones(1))
    assert float(no_source) == pytest.approx(6.0)  # image scale 1 where there is no source


def test_guidance_outside_interval_is_plain_conditional(tiny_recipe, make_batch):
    model = _model(tiny_recipe, und_writeback=True)
    batch = make_batch(model)
    cond = _conditioning(model, batch)
    shape = (len(batch), 48, 8, 8)
    plain = sample(model, cond, shape, SamplerConfig(steps=3, text_guidance=1.0, image_guidance=1.0), [5] * 4)
    # All sampling times are > 0.9 only at the first step; an interval (0, 0.05] never applies.
    off = sample(model, cond, shape, SamplerConfig(steps=3, guidance_interval=(0.0, 0.05)), [5] * 4)
    on = sample(model, cond, shape, SamplerConfig(steps=3), [5] * 4)
    torch.testing.assert_close(off, plain, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(on, plain, atol=1e-3)


def test_an_image_depends_on_its_seed_not_its_batch(tiny_recipe, make_batch):
    model = _model(tiny_recipe, und_writeback=True)
    batch = make_batch(model, n=2)
    one = make_batch(model, n=1)
    cfg = SamplerConfig(steps=3)
    pair = sample(model, _conditioning(model, batch), (2, 48, 8, 8), cfg, [11, 12])
    alone = sample(model, _conditioning(model, one), (1, 48, 8, 8), cfg, [11])
    torch.testing.assert_close(alone[0], pair[0], rtol=1e-4, atol=1e-4)
    again = sample(model, _conditioning(model, one), (1, 48, 8, 8), cfg, [12])
    assert not torch.allclose(again, alone)


@pytest.mark.parametrize("bad", [dict(steps=0), dict(shift=0.0), dict(guidance_interval=(0.5, 0.2)),
                                 dict(renorm="bogus"), dict(text_guidance=-1.0)])
def test_bad_sampler_settings_are_refused(bad):
    with pytest.raises(ValueError):
        SamplerConfig(**bad)


def test_euler_reaches_the_data_under_the_exact_velocity(tiny_model, make_batch, monkeypatch):
    """For one data point x0 the exact velocity is (x_t - x0) / t; Euler must land on x0, with
    guidance on (all branches agree), the cache on or off, and any shift."""
    batch = make_batch(tiny_model, n=2)
    cond = _conditioning(tiny_model, batch)
    x0 = torch.randn(2, 48, 8, 8, generator=torch.Generator().manual_seed(3))
    gen = tiny_model.gen

    def exact(gen_inputs):
        x_t, t = gen_inputs.latents[:, :, -1], gen_inputs.timesteps[:, -1].view(-1, 1, 1, 1)
        n = x_t.shape[0] // 2
        v = (x_t - x0.repeat(n, 1, 1, 1)) / t
        tokens = gen.patchify(v.unsqueeze(2))
        n_slots = gen_inputs.latents.shape[2]
        return torch.cat([torch.zeros_like(tokens)] * (n_slots - 1) + [tokens], dim=1)

    monkeypatch.setattr(type(tiny_model), "forward", lambda self, und, g: type("O", (), {"velocity": exact(g)}))
    def with_cache(self, und, g):
        return type("O", (), {"velocity": exact(g)}), UndCache([], und.order, und.valid)

    monkeypatch.setattr(type(tiny_model), "forward_with_cache", with_cache)
    monkeypatch.setattr(type(tiny_model), "forward_generation", lambda self, g, cache: exact(g))
    for cfg in (SamplerConfig(steps=4, shift=3.0), SamplerConfig(steps=7, shift=1.0, use_cache=False)):
        out = sample(tiny_model, cond, (2, 48, 8, 8), cfg, [0, 1])
        torch.testing.assert_close(out, x0, rtol=1e-4, atol=1e-4)


def test_each_guidance_branch_is_built_as_documented(tiny_model, make_batch):
    """Branch-major rows: full condition, text hidden, source image (ViT + clean VAE) hidden."""
    from lightbagel.inference.sampler import _Branches
    from lightbagel.inputs import TEXT, VIT

    batch = make_batch(tiny_model)
    cond = _conditioning(tiny_model, batch)
    assert cond.has_source.any() and not cond.has_source.all()
    branches = _Branches(tiny_model, cond, SamplerConfig(text_guidance=4.0, image_guidance=1.5))
    n, seg, valid = len(batch), batch.und.segment, batch.und.valid
    keep = branches.all.und.keep.unflatten(0, (3, n))
    assert torch.equal(keep[0] & valid, valid)  # everything the prompt holds
    assert torch.equal(keep[1] & valid, valid & (seg != TEXT))  # no text, images kept
    assert torch.equal(keep[2] & valid, valid & (seg != VIT))  # no ViT tokens, text kept
    sources = branches.all.source_valid.unflatten(0, (3, n))
    assert torch.equal(sources[0], cond.source_valid) and torch.equal(sources[1], cond.source_valid)
    assert not sources[2].any()  # ... and no clean VAE source slot


def test_text_guidance_changes_the_image(tiny_recipe, make_batch):
    model = _model(tiny_recipe, und_writeback=True)
    batch = make_batch(model)
    cond = Conditioning(batch.und)  # text-to-image: only text guidance can act
    shape, seeds = (len(batch), 48, 8, 8), [5] * len(batch)
    plain = sample(model, cond, shape, SamplerConfig(steps=3, text_guidance=1.0, image_guidance=1.0), seeds)
    guided = sample(model, cond, shape, SamplerConfig(steps=3, text_guidance=4.0, image_guidance=1.0), seeds)
    assert (guided - plain).abs().max() > 1e-2


def test_rotary_tables_are_reused_only_for_the_same_layout(tiny_model):
    """Sampling steps reuse the DiT's rotary tables; another frame layout of the same shape gets its own."""
    gen = tiny_model.gen
    latents = torch.randn(2, 48, 2, 8, 8)

    def rope(frames):
        inputs = GenInputs(latents, torch.zeros(2, 2), torch.tensor(frames), torch.ones(2, 2, dtype=torch.bool),
                           torch.zeros(2, 2, dtype=torch.long))
        with torch.no_grad():  # as in sampling; training layouts never repeat, so training skips the memo
            return gen.embed(inputs)[1]

    first, again, other = rope([[0, 1], [0, 1]]), rope([[0, 1], [0, 1]]), rope([[0, 0], [0, 0]])
    assert again[0] is first[0]
    hp, wp = (8 // p for p in gen.patch_size[1:])
    torch.testing.assert_close(other[0], gen._rope(torch.zeros(2, 2, dtype=torch.long), hp, wp)[0], rtol=0, atol=0)
    assert not torch.equal(other[0], first[0])


def bagel_times(num_timesteps: int, shift: float) -> torch.Tensor:
    """BAGEL's evaluated times, re-typed from `generate_image` (modeling/bagel/bagel.py)."""
    t = torch.linspace(1, 0, num_timesteps)
    t = shift * t / (1 + (shift - 1) * t)
    return t[:-1]


@pytest.mark.parametrize("num_timesteps", [2, 50])
def test_bagels_num_timesteps_is_one_more_than_steps_on_the_same_grid(num_timesteps):
    """BAGEL's 50 timesteps are 49 updates; `steps=49` evaluates the model at exactly its times."""
    from lightbagel.flow_matching import sampling_times

    ours = sampling_times(num_timesteps - 1, 3.0)
    assert ours[-1] == 0 and len(ours) == num_timesteps
    # Same fp32 ops on the same inputs; linspace over 50 vs 51 points would differ by ~1e-2.
    torch.testing.assert_close(ours[:-1], bagel_times(num_timesteps, 3.0), rtol=0, atol=1e-7)


@pytest.mark.parametrize("text, image, branches", [
    (1.0, 2.0, 1),  # no text guidance: no image guidance either
    (0.5, 2.0, 1),  # a scale below 1 is off, not negative guidance
    (4.0, 0.5, 2),
    (4.0, 2.0, 3),
])
def test_guidance_branches_follow_bagels_rule(tiny_model, make_batch, text, image, branches):
    from lightbagel.inference.sampler import _Branches

    cond = _conditioning(tiny_model, make_batch(tiny_model))
    assert cond.has_source.any()
    assert _Branches(tiny_model, cond, SamplerConfig(text_guidance=text, image_guidance=image)).n_all == branches
