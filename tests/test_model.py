"""The fused model's defining properties: zero-init identity and the generalized causal mask."""

from __future__ import annotations

import torch

from lightbagel.inputs import GenInputs, gen_inputs
from tests.tolerance import across_kernels


def _t2i_gen(batch: int, seed: int = 0) -> GenInputs:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 48, 8, 8, generator=g)
    return gen_inputs(latents, torch.rand(batch, generator=g))


def test_zero_init_understanding_logits_equal_standalone_vlm(tiny_model, make_batch):
    batch = make_batch(tiny_model)
    und = batch.und
    out = tiny_model(und, _t2i_gen(len(batch)))
    ref = tiny_model.und.model(
        input_ids=und.input_ids, attention_mask=und.attention_mask, pixel_values=und.pixel_values,
        image_grid_thw=und.image_grid_thw, mm_token_type_ids=und.mm_token_type_ids,
    ).logits
    real = und.attention_mask.bool()
    torch.testing.assert_close(tiny_model.understanding_logits(out)[real], ref[real], rtol=0, atol=0)


def test_zero_init_dit_output_equals_standalone_dit(tiny_model, make_batch):
    batch = make_batch(tiny_model)
    gen = _t2i_gen(len(batch))
    out = tiny_model(batch.und, gen)
    dit = tiny_model.gen.dit
    # The stand-alone DiT without its umT5 cross-attention, which lightbagel never loads.
    hooks = [blk.attn2.register_forward_hook(lambda m, i, o: torch.zeros_like(o)) for blk in dit.blocks]
    try:
        per_token_t = (gen.timesteps * 1000).repeat_interleave(tiny_model.gen.tokens_per_slot(8, 8), dim=1)
        ref = dit(hidden_states=gen.latents, timestep=per_token_t,
                  encoder_hidden_states=torch.zeros(len(batch), 1, dit.config.text_dim)).sample
    finally:
        for h in hooks:
            h.remove()
    mine = tiny_model.gen.unpatchify(out.velocity, 1, 8, 8)
    # Other kernels than diffusers' (a masked attention, per-token modulation): tests/tolerance.py.
    torch.testing.assert_close(mine, ref, **across_kernels(mine.dtype))


def _perturb_fusion(model, seed: int = 0) -> None:
    """Trained fusion blocks are not zero: give every weight a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.fusion.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _edit_inputs(model, batch, latents_seed: int):
    g = torch.Generator().manual_seed(latents_seed)
    noisy = torch.randn(len(batch), 48, 8, 8, generator=g)
    source = model.gen.vae.encode(batch.source)
    return gen_inputs(noisy, torch.full((len(batch),), 0.7), source, batch.has_source, batch.source_order)


def test_noisy_target_never_reaches_understanding(tiny_model, make_batch):
    _perturb_fusion(tiny_model)
    batch = make_batch(tiny_model)
    out_a = tiny_model(batch.und, _edit_inputs(tiny_model, batch, latents_seed=1))
    out_b = tiny_model(batch.und, _edit_inputs(tiny_model, batch, latents_seed=2))
    torch.testing.assert_close(out_a.und_hidden, out_b.und_hidden, rtol=0, atol=0)
    # ...while the generation output does depend on them (the test can fail).
    assert not torch.allclose(out_a.velocity, out_b.velocity)


def test_clean_source_tokens_do_not_see_the_noise(tiny_model, make_batch):
    _perturb_fusion(tiny_model)
    batch = make_batch(tiny_model)
    n_src = tiny_model.gen.tokens_per_slot(8, 8)
    outs = [tiny_model(batch.und, _edit_inputs(tiny_model, batch, s)).velocity[:, :n_src] for s in (1, 2)]
    edit = batch.has_source
    torch.testing.assert_close(outs[0][edit], outs[1][edit], rtol=0, atol=0)


def test_text_token_changes_generation(tiny_model, make_batch):
    _perturb_fusion(tiny_model)
    batch = make_batch(tiny_model)
    gen = _t2i_gen(len(batch))
    before = tiny_model(batch.und, gen).velocity
    ids = batch.und.input_ids.clone()
    text = (batch.und.segment == 1).nonzero()[0]  # first text token of some sample
    ids[text[0], text[1]] = (ids[text[0], text[1]] + 1) % tiny_model.und.model.config.text_config.vocab_size
    after = tiny_model(type(batch.und)(**{**batch.und.__dict__, "input_ids": ids}), gen).velocity
    changed = (after - before).abs().amax(dim=(1, 2)) > 1e-6
    assert changed[text[0]] and changed.sum() == 1, "only the edited sample's image may change"


def test_padding_and_batch_neighbours_do_not_leak(tiny_model, make_batch):
    _perturb_fusion(tiny_model)
    batch = make_batch(tiny_model, n=4)
    gen = _edit_inputs(tiny_model, batch, 3)
    full = tiny_model(batch.und, gen).velocity
    one = make_batch(tiny_model, n=1)  # the same first sample, alone and without padding
    assert one.texts[0] == batch.texts[0]
    gen_one = GenInputs(**{k: v[:1] for k, v in gen.__dict__.items()})
    alone = tiny_model(one.und, gen_one).velocity
    torch.testing.assert_close(alone, full[:1], rtol=1e-4, atol=1e-5)


def test_pairing_reuses_last_vlm_output(tiny_model):
    # Tiny card: 2 VLM layers, 3 DiT blocks -> the third fusion block reuses the last VLM output.
    assert tiny_model.schedule == [1, 2, 2]
    from lightbagel.fusion import vlm_depth_schedule

    assert vlm_depth_schedule(30, 28, 0.0)[-3:] == [28, 28, 28]
    assert vlm_depth_schedule(30, 28, 1.0) == [28] * 30
    assert vlm_depth_schedule(4, 8, 0.5) == [5, 6, 7, 8]
