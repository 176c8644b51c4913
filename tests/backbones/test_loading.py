"""The loading path of the real cards, without a download: tiny backbones saved with
`save_pretrained` in the real repositories' folder layouts, loaded back through the very builders
the 7B / 5B cards use (a card whose `pretrained` is a local directory)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan
from PIL import Image

from lightbagel.model import build_model
from lightbagel.recipe import load_recipe
from lightbagel.recipe.schema import GenerationConfig, VAEConfig
from lightbagel.registry import GENERATION, UNDERSTANDING

# A Wan2.2-style VAE (residual, 2x2 patchified RGB) small enough for a test.
TINY = Path(__file__).resolve().parents[2] / "recipes" / "tiny.yaml"
TINY_WAN22_VAE = {
    "base_dim": 8, "decoder_base_dim": 8, "z_dim": 8, "dim_mult": [1, 2, 2], "num_res_blocks": 1,
    "attn_scales": [], "temperal_downsample": [False, True], "dropout": 0.0, "is_residual": True,
    "in_channels": 12, "out_channels": 12, "patch_size": 2, "scale_factor_temporal": 2,
    "scale_factor_spatial": 8, "latents_mean": [0.1] * 8, "latents_std": [0.9] * 8,
}
TINY_DIT = {
    "patch_size": [1, 2, 2], "num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 8,
    "out_channels": 8, "text_dim": 32, "freq_dim": 64, "ffn_dim": 64, "num_layers": 2, "rope_max_seq_len": 64,
}


@pytest.fixture(scope="module")
def qwen_repo(tmp_path_factory, tiny_recipe):
    """Qwen/Qwen2.5-VL-7B-Instruct's layout: config.json, model.safetensors, tokenizer files and
    preprocessor_config.json in one directory."""
    cfg = tiny_recipe.config.understanding
    adapter = UNDERSTANDING.get(cfg.adapter)(cfg)
    root = tmp_path_factory.mktemp("qwen2_5_vl")
    adapter.model.save_pretrained(root, safe_serialization=True)
    adapter.processor.tokenizer.save_pretrained(root)
    adapter.processor.image_processor.save_pretrained(root)
    return root, adapter


def _card(cfg, root, config):
    return replace(cfg, pretrained=str(root), config=config, load_weights=True, tokenizer=None)


def test_qwen_repo_layout_loads_through_the_card_path(qwen_repo, tiny_recipe):
    root, saved = qwen_repo
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"} <= {
        p.name for p in root.iterdir()}
    text = saved.model.config.text_config
    card = _card(tiny_recipe.config.understanding, root,
                 {"text_config": {"hidden_size": text.hidden_size, "num_hidden_layers": text.num_hidden_layers}})
    loaded = UNDERSTANDING.get(card.adapter)(card)
    assert all(not p.requires_grad for p in loaded.parameters())  # the card freezes the VLM
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    segments = [image, "make the circle green"]
    prompt = loaded.processor.encode(segments)
    assert prompt.input_ids == saved.processor.encode(segments).input_ids
    und = loaded.processor.collate([prompt])
    kwargs = dict(input_ids=und.input_ids, attention_mask=und.attention_mask, pixel_values=und.pixel_values,
                  image_grid_thw=und.image_grid_thw, mm_token_type_ids=und.mm_token_type_ids)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(**kwargs).logits, saved.model(**kwargs).logits, rtol=0, atol=0)


def test_card_config_must_match_the_checkpoint(qwen_repo, tiny_recipe):
    root, _ = qwen_repo
    card = _card(tiny_recipe.config.understanding, root, {"text_config": {"hidden_size": 3584}})
    with pytest.raises(ValueError, match="text_config.hidden_size=3584"):
        UNDERSTANDING.get(card.adapter)(card)


@pytest.fixture(scope="module")
def wan_repo(tmp_path_factory):
    """Wan-AI/Wan2.2-TI2V-5B-Diffusers' layout: `transformer/` and `vae/` subfolders."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    dit, vae = WanTransformer3DModel(**TINY_DIT), AutoencoderKLWan(**TINY_WAN22_VAE)
    root = tmp_path_factory.mktemp("wan2_2")
    dit.save_pretrained(root / "transformer", safe_serialization=True)
    vae.save_pretrained(root / "vae", safe_serialization=True)
    return root, dit.eval(), vae.eval()


def test_wan_diffusers_layout_loads_through_the_card_path(wan_repo):
    root, dit, vae = wan_repo
    card = GenerationConfig(
        card="local_wan", adapter="wan", pretrained=str(root), subfolder="transformer", config=dict(TINY_DIT),
        vae=VAEConfig(adapter="wan_vae", pretrained=str(root), subfolder="vae", config=dict(TINY_WAN22_VAE)),
    )
    adapter = GENERATION.get(card.adapter)(card).eval()
    assert adapter.vae.latent_channels == 8 and adapter.vae.spatial_factor == 8
    assert not any(p.requires_grad for p in adapter.vae.parameters())
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 8, 1, 4, 4, generator=g)
    text = torch.randn(1, 3, 32, generator=g)
    call = dict(hidden_states=latents, timestep=torch.tensor([500]), encoder_hidden_states=text)
    images = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    for name, tensor in dit.state_dict().items():  # every weight arrives bit for bit
        assert torch.equal(adapter.dit.state_dict()[name], tensor), name
    with torch.no_grad():
        torch.testing.assert_close(adapter.dit(**call).sample, dit(**call).sample, rtol=1e-5, atol=1e-6)
        want = vae.encode(images.unsqueeze(2)).latent_dist.mode()[:, :, 0]
        got = adapter.vae.encode(images) * adapter.vae.std + adapter.vae.mean  # undo the normalisation
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("freeze", [False, True])
def test_bf16_mixed_reads_trainable_weights_in_fp32_and_frozen_ones_in_bf16(tmp_path, freeze):
    """precision.PrecisionPlan.read_dtype through `build_model`: trainable weights arrive as fp32
    masters bit for bit (a bf16 read would round them before training starts), frozen ones in bf16."""
    from diffusers import WanTransformer3DModel

    recipe = load_recipe(TINY, ["generation=tiny_wan2_1", "trainer.precision=bf16-mixed"]).config
    torch.manual_seed(0)
    saved = WanTransformer3DModel(**recipe.generation.config)
    saved.save_pretrained(tmp_path, safe_serialization=True)
    model = build_model(replace(recipe, generation=replace(recipe.generation, pretrained=str(tmp_path), freeze=freeze)))
    read = model.gen.dit.state_dict()
    weight = "blocks.0.ffn.net.2.weight"  # a block layer, on no fp32 list
    if freeze:
        assert read[weight].dtype == torch.bfloat16
        assert torch.equal(read[weight], saved.state_dict()[weight].bfloat16())
    else:
        for name, tensor in saved.state_dict().items():
            assert torch.equal(read[name], tensor), name


def test_wan_card_config_must_match_the_checkpoint(wan_repo):
    root, _, _ = wan_repo
    card = GenerationConfig(card="local_wan", adapter="wan", pretrained=str(root), subfolder="transformer",
                            config={"num_layers": 30}, vae=VAEConfig(adapter="pixel"))
    with pytest.raises(ValueError, match="num_layers=30"):
        GENERATION.get(card.adapter)(card)


def test_chat_prompts_follow_the_saved_chat_template(qwen_repo, tiny_recipe):
    root, _ = qwen_repo
    loaded = UNDERSTANDING.get("qwen2_5_vl")(_card(tiny_recipe.config.understanding, root, {}))
    proc, tok = loaded.processor, loaded.processor.tokenizer
    assert tok.chat_template  # saved beside the model and read back from the directory
    question = "what color is the circle"
    text_only = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    assert proc.chat(question).input_ids == list(text_only["input_ids"])
    # With an image, the template's one <|image_pad|> stands for all of the image's ViT tokens.
    image = Image.new("RGB", (32, 16), (200, 30, 30))
    content = [{"type": "image"}, {"type": "text", "text": question}]
    templated = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    prompt = proc.chat(question, [image])
    n = int(prompt.image_grid_thw[0].prod()) // proc.merge_size**2
    pad = proc.image_token_id
    assert prompt.input_ids == [t for i in templated["input_ids"] for t in ([pad] * n if i == pad else [i])]
    # Generation conditioning wraps the text as BAGEL does: <|im_start|> text <|im_end|>.
    start, end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    plain = tok("make the circle green", add_special_tokens=False)["input_ids"]
    assert proc.prompt("make the circle green").input_ids == [start, *plain, end]
