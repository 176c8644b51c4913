"""The pipeline: save/load round trip, text-to-image, editing with one or two sources, answers."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from lightbagel import shapes
from lightbagel.inference import LightBagelPipeline, SamplerConfig

FAST = SamplerConfig(steps=2, shift=1.0)


@pytest.fixture
def pipe(tiny_recipe):
    from lightbagel.model import build_model

    model = build_model(tiny_recipe.config).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a "trained" model: fusion weights away from zero
        for p in model.fusion.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return LightBagelPipeline(model, tiny_recipe.config)


def _scene_image(seed: int) -> Image.Image:
    return shapes.render(shapes.sample_scene(random.Random(seed)), 32)


def test_save_and_load_give_the_same_images(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "export")
    again = LightBagelPipeline.from_pretrained(tmp_path / "export")
    a = pipe("a red circle", config=FAST, seed=3).images[0]
    b = again("a red circle", config=FAST, seed=3).images[0]
    assert a.size == (32, 32)
    assert list(a.getdata()) == list(b.getdata())


def test_a_bfloat16_pipeline_keeps_the_fp32_list_and_edits(pipe, tmp_path):
    """`dtype` casts every weight but what the original models keep in fp32 (precision.py)."""
    pipe.save_pretrained(tmp_path / "export")
    bf16 = LightBagelPipeline.from_pretrained(tmp_path / "export", dtype="bfloat16")
    params, buffers = dict(bf16.model.named_parameters()), dict(bf16.model.named_buffers())
    assert params["fusion.0.gen.to_q.weight"].dtype == params["und.model.lm_head.weight"].dtype == torch.bfloat16
    assert buffers["und.model.model.language_model.rotary_emb.inv_freq"].dtype == torch.float32
    assert params["gen.dit.scale_shift_table"].dtype == buffers["gen.dit.rope.freqs_cos"].dtype == torch.float32
    assert bf16("make the circle green", images=_scene_image(1), config=FAST).images[0].size == (32, 32)


def test_batch_of_prompts_with_and_without_sources(pipe):
    src = _scene_image(1)
    out = pipe(["a blue square", "make the circle green", "add a red circle"],
               images=[None, src, [src, _scene_image(2)]], config=FAST, seed=0)
    assert len(out.images) == 3 and out.settings["num_sources"] == [0, 1, 2]
    assert out.settings["seeds"] == [0, 1, 2]
    # The one-source edit alone gives the same image as inside the mixed batch.
    alone = pipe("make the circle green", images=src, config=FAST, seed=[1]).images[0]
    diff = torch.tensor(list(alone.getdata())) - torch.tensor(list(out.images[1].getdata()))
    assert diff.abs().max() <= 1  # uint8 rounding of float-tolerance differences


def test_num_images_per_prompt_and_seeds(pipe):
    out = pipe("a red circle", config=FAST, seed=10, num_images_per_prompt=2)
    assert out.settings["seeds"] == [10, 11]
    assert list(out.images[0].getdata()) != list(out.images[1].getdata())


def test_one_seed_per_image(pipe):
    with pytest.raises(ValueError, match="one seed per image: 2 seeds for 1 images"):
        pipe("a red circle", config=FAST, seed=[1, 2])


def test_size_must_fit_the_patch_grid(pipe):
    with pytest.raises(ValueError, match="multiples of 4"):  # pixel autoencoder 4 x DiT patch 1
        pipe("a red circle", height=34, config=FAST)


def test_understand_is_greedy_decoding_of_the_vlm(pipe):
    image = _scene_image(4)
    ids = pipe.answer_tokens("what color is the circle", images=[image], max_new_tokens=3)
    assert 1 <= len(ids) <= 3
    answer = pipe.understand("what color is the circle", images=[image], max_new_tokens=3)
    assert answer == pipe.model.und.processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
    # The first answer token is the argmax of the stand-alone VLM's next-token logits.
    proc, vlm = pipe.model.und.processor, pipe.model.und.model
    segs = ["<|im_start|>user\n", image.resize((32, 32), Image.BICUBIC),
            "what color is the circle<|im_end|>\n<|im_start|>assistant\n"]
    und = proc.collate([proc.encode(segs)])
    logits = vlm(input_ids=und.input_ids, attention_mask=und.attention_mask, pixel_values=und.pixel_values,
                 image_grid_thw=und.image_grid_thw, mm_token_type_ids=und.mm_token_type_ids).logits
    assert ids[0] == int(logits[0, -1].argmax())


class _ScriptedHead(torch.nn.Module):
    """An LM head that answers a fixed token sequence, one token per decoding step."""

    def __init__(self, vocab: int, script: list[int]):
        super().__init__()
        self.vocab, self.script, self.calls = vocab, script, 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*hidden.shape[:-1], self.vocab)
        logits[..., self.script[min(self.calls, len(self.script) - 1)]] = 1.0
        self.calls += 1
        return logits


def test_chat_stops_at_the_end_of_the_turn(pipe, monkeypatch):
    tok, vlm = pipe.model.und.processor.tokenizer, pipe.model.und.model
    script = tok.convert_tokens_to_ids(["red", "<|im_end|>", "blue", "blue"])
    monkeypatch.setattr(vlm, "lm_head", _ScriptedHead(vlm.config.text_config.vocab_size, script))
    assert pipe.answer_tokens("what color is the circle", max_new_tokens=4) == script[:1]
    vlm.lm_head.calls = 0
    assert pipe.understand("what color is the circle", max_new_tokens=4) == "red"
