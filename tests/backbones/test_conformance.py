"""What every understanding and generation adapter must do, tested on each one's tiny card(s).

A new adapter is picked up here by its tiny card (`components/<kind>/tiny_*.yaml`); a registered
adapter without a tiny card fails `test_every_registered_adapter_has_a_tiny_card`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from diffusers import SD3Transformer2DModel

from lightbagel.inputs import gen_inputs
from lightbagel.model import build_model
from lightbagel.model_folder import export_model, load_exported
from lightbagel.recipe import load_recipe
from lightbagel.registry import FUSION, GENERATION, UNDERSTANDING, VAE
from lightbagel.training.sharding import BlockUnits
from tests.tolerance import across_kernels

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "tiny.yaml"


def tiny_cards(kind: str) -> dict[str, str]:
    """Tiny card name -> its adapter."""
    return {p.stem: yaml.safe_load(p.read_text())["adapter"]
            for p in sorted((REPO / "components" / kind).glob("tiny_*.yaml"))}


UND_CARDS, GEN_CARDS = tiny_cards("understanding"), tiny_cards("generation")
# One tiny generation card per codec: card name -> its VAE adapter.
VAE_CARDS = {card: adapter for adapter, card in {
    yaml.safe_load((REPO / "components" / "generation" / f"{c}.yaml").read_text())["vae"]["adapter"]: c
    for c in reversed(list(GEN_CARDS))}.items()}
REAL_CARDS = [(kind, p.stem) for kind in ("understanding", "generation")
              for p in sorted((REPO / "components" / kind).glob("*.yaml")) if not p.stem.startswith("tiny_")]


def recipe_with(*overrides: str):
    return load_recipe(TINY, list(overrides))


_MODELS: dict[tuple[str, ...], object] = {}


def fused(*overrides: str):
    """The tiny fused model with these card swaps, built once per module (tests must not mutate)."""
    if overrides not in _MODELS:
        _MODELS[overrides] = build_model(recipe_with(*overrides).config).eval()
    return _MODELS[overrides]


def latents_for(model, batch: int, seed: int = 0) -> torch.Tensor:
    """Random latents of the codec's shape for the 32 px shapes world."""
    with torch.no_grad():
        shape = model.gen.vae.encode(torch.zeros(1, 3, 32, 32)).shape[1:]
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def test_every_registered_adapter_has_a_tiny_card():
    assert set(UNDERSTANDING.names()) <= set(UND_CARDS.values()), "add components/understanding/tiny_<name>.yaml"
    assert set(GENERATION.names()) <= set(GEN_CARDS.values()), "add components/generation/tiny_<name>.yaml"
    assert set(VAE.names()) <= set(VAE_CARDS.values()), "add a tiny generation card whose vae uses the codec"
    fusion_cards = {yaml.safe_load(p.read_text())["block"] for p in (REPO / "components" / "fusion").glob("*.yaml")}
    assert set(FUSION.names()) <= fusion_cards, "add components/fusion/<name>.yaml"


ADAPTER_CARDS = [("understanding", c) for c in UND_CARDS] + [("generation", c) for c in GEN_CARDS]


@pytest.mark.parametrize("kind,card", ADAPTER_CARDS)
def test_adapter_declares_its_fp32_weights_and_its_blocks(kind, card, make_batch):
    """What precision.py and training/sharding.py read from the adapter's class, and nowhere else."""
    model = fused(f"{kind}={card}")
    adapter = model.und if kind == "understanding" else model.gen
    for fact in ("keep_in_fp32", "blocks", "block_called"):
        assert hasattr(type(adapter), fact), f"{type(adapter).__name__} must declare {fact}"
    units = BlockUnits.of(adapter)
    assert len(units.modules) == adapter.num_layers and all(isinstance(m, torch.nn.Module) for m in units.modules)
    assert all(m is not adapter for m in units.modules)
    if units.called:  # `block(i)` runs exactly modules[i]: each declared block runs once per forward
        calls = [0] * len(units.modules)
        hooks = [m.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
                 for i, m in enumerate(units.modules)]
        batch = make_batch(model, n=1)  # one text-to-image sample: no ViT image runs
        with torch.no_grad():
            model(batch.und, gen_inputs(latents_for(model, 1), torch.rand(1)))
        for hook in hooks:
            hook.remove()
        assert calls == [1] * len(calls)


@pytest.mark.parametrize("card", VAE_CARDS)
def test_vae_encodes_and_decodes_at_its_factor(card):
    """Every codec really runs: latents at 1/factor of the image, deterministic, decoded to [-1, 1]."""
    vae = fused(f"generation={card}").gen.vae
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latents, again = vae.encode(images), vae.encode(images)
        decoded = vae.decode(latents)
    f = vae.spatial_factor
    assert latents.shape == (2, vae.latent_channels, 32 // f, 32 // f)
    assert torch.equal(latents, again) and torch.isfinite(latents).all()
    assert decoded.shape == images.shape and decoded.abs().max() <= 1
    assert not torch.equal(latents[0], latents[1])  # the latents depend on the image


# ---- understanding adapters ---------------------------------------------------------------------

@pytest.mark.parametrize("card", UND_CARDS)
def test_und_shapes(card, make_batch):
    model = fused(f"understanding={card}")
    und = model.und
    batch = make_batch(model)
    hidden, rope = und.embed(batch.und)
    b, length = batch.und.input_ids.shape
    assert hidden.shape == (b, length, und.hidden_size)
    mask = torch.ones(b, 1, length, length, dtype=torch.bool)
    assert und.block(0, hidden, mask, rope).shape == hidden.shape
    assert und.logits(hidden).shape[:2] == (b, length)
    q = torch.randn(b, length, und.num_heads, und.head_dim)
    assert und.rotate(q, rope).shape == q.shape


def _text_rope(model, text: str = "a red circle left of a blue square"):
    processor = model.und.processor
    und = processor.collate([processor.encode([text])])
    return model.und.embed(und)[1], und.input_ids.shape[1]


@pytest.mark.parametrize("card", UND_CARDS)
def test_und_rotary_is_a_relative_rotation(card):
    model = fused(f"understanding={card}")
    rope, length = _text_rope(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, length, 2, model.und.head_dim, generator=g)
    rot = model.und.rotate(x, rope)
    torch.testing.assert_close(rot.norm(dim=-1), x.norm(dim=-1))  # a rotation
    torch.testing.assert_close(rot[:, 0], x[:, 0])  # position 0 is the identity
    assert not torch.allclose(rot[:, 1:], x[:, 1:])
    # The same query and key at every position: q_i . k_j depends on i - j only.
    q = model.und.rotate(x[:, :1].expand_as(x), rope)
    k = model.und.rotate(x[:, 1:2].expand_as(x), rope)
    scores = torch.einsum("bihd,bjhd->bhij", q, k)
    torch.testing.assert_close(scores[..., 2, 0], scores[..., 3, 1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(scores[..., 1, 4], scores[..., 2, 5], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("card", UND_CARDS)
def test_und_freeze_follows_the_card(card, make_batch):
    frozen = fused(f"understanding={card}")
    assert not any(p.requires_grad for p in frozen.und.parameters())
    model = build_model(recipe_with(f"understanding={card}", "understanding.freeze=false").config)
    batch = make_batch(model)
    hidden, rope = model.und.embed(batch.und)
    mask = torch.ones(1, 1, hidden.shape[1], hidden.shape[1], dtype=torch.bool)
    for i in range(model.und.num_layers):
        hidden = model.und.block(i, hidden, mask, rope)
    model.und.logits(hidden).float().pow(2).mean().backward()
    unused = [n for n, p in model.und.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"trainable parameters the adapter never uses: {unused[:5]}"


# ---- generation adapters ------------------------------------------------------------------------

@pytest.mark.parametrize("card", GEN_CARDS)
def test_gen_shapes_and_patchify_round_trip(card):
    model = fused(f"generation={card}")
    gen = model.gen
    x = latents_for(model, 2)
    _, c, h, w = x.shape
    assert c == gen.vae.latent_channels
    with torch.no_grad():
        assert gen.vae.encode(torch.zeros(2, 3, 32, 32)).shape == x.shape
        assert gen.vae.decode(x).shape == (2, 3, 32, 32)
        for slots in (1, 2):
            inputs = gen_inputs(x, torch.rand(2)) if slots == 1 else \
                gen_inputs(x, torch.rand(2), x, torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.long))
            tokens, rope, cond = gen.embed(inputs)
            n = slots * gen.tokens_per_slot(h, w)
            assert tokens.shape == (2, n, gen.hidden_size)
            mask = torch.ones(2, 1, n, n, dtype=torch.bool)
            assert gen.block(0, tokens, mask, rope, cond).shape == tokens.shape
            patches = gen.patchify(inputs.latents)
            assert gen.head(tokens, cond).shape == patches.shape
            torch.testing.assert_close(gen.unpatchify(patches, slots, h, w), inputs.latents)


@pytest.mark.parametrize("card", GEN_CARDS)
def test_gen_rotary_is_a_relative_rotation(card):
    model = fused(f"generation={card}")
    gen = model.gen
    x = latents_for(model, 1)
    h, w = x.shape[-2:]
    _, rope, _ = gen.embed(gen_inputs(x, torch.rand(1)))
    n, cols = gen.tokens_per_slot(h, w), w // gen.patch_size[2]
    g = torch.Generator().manual_seed(0)
    v = torch.randn(1, 1, 2, gen.head_dim, generator=g).expand(1, n, 2, gen.head_dim)
    rot = gen.rotate(v, rope)
    torch.testing.assert_close(rot.norm(dim=-1), v.norm(dim=-1))
    torch.testing.assert_close(rot[:, 0], v[:, 0])  # frame 0, row 0, column 0
    scores = torch.einsum("bihd,bjhd->bhij", rot, rot)
    # One column apart in the first row and in the second row: the same relative offset.
    torch.testing.assert_close(scores[..., 0, 1], scores[..., cols, cols + 1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("card", GEN_CARDS)
def test_gen_freeze_follows_the_card(card):
    model = build_model(recipe_with(f"generation={card}").config)
    gen = model.gen
    assert not any(p.requires_grad for p in gen.vae.parameters()), "the codec is frozen"
    x = latents_for(model, 2)
    inputs = gen_inputs(x, torch.rand(2), x, torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.long))
    tokens, rope, cond = gen.embed(inputs)
    for i in range(gen.num_layers):
        tokens = gen.block(i, tokens, None, rope, cond)
    gen.head(tokens, cond).pow(2).mean().backward()
    trainable = [n for n, p in gen.named_parameters() if p.requires_grad]
    assert trainable
    unused = [n for n, p in gen.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"trainable parameters the adapter never uses: {unused[:5]}"
    frozen = build_model(recipe_with(f"generation={card}", "generation.freeze=true").config)
    assert not any(p.requires_grad for p in frozen.gen.parameters())


# ---- both, through the fused model --------------------------------------------------------------

SWAPS = [f"understanding={c}" for c in UND_CARDS] + [f"generation={c}" for c in GEN_CARDS]


def _perturb_fusion(model, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.fusion.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("swap", SWAPS)
def test_zero_init_fusion_is_the_identity(swap, make_batch):
    model = fused(swap)
    alone = fused(swap, "fusion=none")  # same seed: the same towers, no fusion at all
    batch = make_batch(model)
    gen = gen_inputs(latents_for(model, len(batch)), torch.rand(len(batch)))
    with torch.no_grad():
        out, ref = model(batch.und, gen), alone(batch.und, gen)
        hf = model.und.model(input_ids=batch.und.input_ids, attention_mask=batch.und.attention_mask,
                             pixel_values=batch.und.pixel_values, image_grid_thw=batch.und.image_grid_thw,
                             mm_token_type_ids=batch.und.mm_token_type_ids).logits
    torch.testing.assert_close(out.velocity, ref.velocity, rtol=0, atol=0)
    real = batch.und.attention_mask.bool()
    torch.testing.assert_close(model.understanding_logits(out)[real], hf[real], rtol=0, atol=0)


@pytest.mark.parametrize("swap", SWAPS)
def test_trained_fusion_carries_text_to_the_dit(swap, make_batch):
    model = build_model(recipe_with(swap).config).eval()
    _perturb_fusion(model)
    batch = make_batch(model)
    gen = gen_inputs(latents_for(model, len(batch)), torch.rand(len(batch)))
    ids = batch.und.input_ids.clone()
    row, col = (batch.und.segment == 1).nonzero()[0]
    ids[row, col] = (ids[row, col] + 1) % model.und.model.config.text_config.vocab_size
    with torch.no_grad():
        before = model(batch.und, gen).velocity
        after = model(type(batch.und)(**{**batch.und.__dict__, "input_ids": ids}), gen).velocity
    changed = (after - before).abs().amax(dim=(1, 2)) > 1e-6
    assert changed[row] and changed.sum() == 1, "only the edited sample's prediction may change"


def _dit_alone(model, gen) -> torch.Tensor:
    """The stand-alone diffusers DiT on one noisy image, without text (what zero-init reproduces)."""
    dit, b = model.gen.dit, gen.latents.shape[0]
    t = gen.timesteps[:, 0] * model.gen.num_train_timesteps
    if isinstance(dit, SD3Transformer2DModel):
        cfg = dit.config
        no_text = torch.zeros(b, 0, cfg.joint_attention_dim)
        return dit(hidden_states=gen.latents[:, :, 0], timestep=t, encoder_hidden_states=no_text,
                   pooled_projections=torch.zeros(b, cfg.pooled_projection_dim)).sample.unsqueeze(2)
    hooks = [blk.attn2.register_forward_hook(lambda m, i, o: torch.zeros_like(o)) for blk in dit.blocks]
    try:
        no_text = torch.zeros(b, 1, dit.config.text_dim)
        return dit(hidden_states=gen.latents, timestep=t, encoder_hidden_states=no_text).sample
    finally:
        for hook in hooks:
            hook.remove()


def _adapter_alone(model, und, gen) -> torch.Tensor:
    """The generation adapter's own blocks on the fused model's DiT mask, no fusion block between them."""
    h_gen, rope, cond = model.gen.embed(gen)
    gen_mask = model._masks(und, gen, h_gen.shape[1])[2]
    for i in range(model.gen.num_layers):
        h_gen = model.gen.block(i, h_gen, gen_mask, rope, cond)
    return model.gen.head(h_gen, cond)


@pytest.mark.parametrize("card", GEN_CARDS)
def test_zero_init_fusion_adds_exactly_nothing_to_the_dit(card, make_batch):
    """Exact by construction: the same adapter kernels on the same inputs, and each zero-initialised
    fusion block adds `0 * x + 0`, which is exactly zero on any CPU."""
    model = fused(f"generation={card}")
    batch = make_batch(model)
    gen = gen_inputs(latents_for(model, len(batch)), torch.rand(len(batch)))
    with torch.no_grad():
        mine, ref = model(batch.und, gen).velocity, _adapter_alone(model, batch.und, gen)
    torch.testing.assert_close(mine, ref, rtol=0, atol=0)


@pytest.mark.parametrize("card", GEN_CARDS)
def test_zero_init_dit_equals_the_standalone_diffusers_model(card, make_batch):
    model = fused(f"generation={card}")
    batch = make_batch(model)
    gen = gen_inputs(latents_for(model, len(batch)), torch.rand(len(batch)))
    h, w = gen.latents.shape[-2:]
    with torch.no_grad():
        mine = model.gen.unpatchify(model(batch.und, gen).velocity, 1, h, w)
        ref = _dit_alone(model, gen)
    # Not exact: the adapter runs per-token modulation and a masked attention where diffusers runs
    # per-sample modulation and its own attention processor, other kernels (tests/tolerance.py).
    torch.testing.assert_close(mine, ref, **across_kernels(mine.dtype))


@pytest.mark.parametrize("swap", SWAPS)
def test_export_round_trip(swap, make_batch, tmp_path):
    recipe = recipe_with(swap)
    model = build_model(recipe.config).eval()
    _perturb_fusion(model, seed=3)  # weights the rebuild cannot reproduce from the seed
    export_model(model, recipe.config, recipe.to_yaml(), tmp_path)
    loaded = load_exported(tmp_path).eval()
    batch = make_batch(model)
    x = latents_for(model, len(batch))
    source = model.gen.vae.encode(batch.source)
    gen = gen_inputs(x, torch.full((len(batch),), 0.5), source, batch.has_source, batch.source_order)
    with torch.no_grad():
        a, b = model(batch.und, gen), loaded(batch.und, gen)
    torch.testing.assert_close(a.velocity, b.velocity, rtol=0, atol=0)
    torch.testing.assert_close(a.und_hidden, b.und_hidden, rtol=0, atol=0)


# ---- real cards ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, card", REAL_CARDS)
def test_real_card_builds_weightless_on_meta(kind, card):
    """Every real card's shipped config builds its architecture (what lightbagel-plan counts)."""
    cfg = getattr(recipe_with(f"{kind}={card}").config, kind)
    cfg.load_weights = False
    if kind == "generation":
        cfg.vae.load_weights = False
    registry = UNDERSTANDING if kind == "understanding" else GENERATION
    with torch.device("meta"):
        adapter = registry.get(cfg.adapter)(cfg)
    assert adapter.num_layers > 0 and adapter.num_heads * adapter.head_dim > 0
    assert all(p.device.type == "meta" for p in adapter.parameters())
    if kind == "generation":
        assert adapter.vae.latent_channels == adapter.dit.config.in_channels


@pytest.mark.parametrize("kind, card", [("understanding", c) for c in UND_CARDS] +
                         [("generation", c) for c in GEN_CARDS])
@torch.no_grad()
def test_packed_rows_equal_padded_rows(kind, card):
    """Packing (packing.py) gathers an adapter's rotary tables and embeds slots one per frame: a mixed
    batch with condition dropout gives each sample's target the padded layout's velocity."""
    from tests.test_model import _perturb_fusion
    from tests.test_packing import DROPS, _batch, _velocities

    model = build_model(recipe_with(f"{kind}={card}").config).eval()
    _perturb_fusion(model)
    batch = _batch(model, "tteeetee", size=32)
    packed, padded = (_velocities(model, batch, DROPS, layout) for layout in ("packed", "padded"))
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)
