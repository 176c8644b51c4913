"""The fused model's joint mask around an edit source: [vision_start, image, vision_end] is one
bidirectional split, the edit layout orders the ViT and VAE splits, and nothing sees the noise."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lightbagel.inputs import VIT, gen_inputs
from lightbagel.model import build_model


def _joint_mask(recipe, layout: str):
    """The mask `LightBagel` builds for "red . [source] make the circle green", and which
    positions hold the start/end tokens, the image tokens, text after the image, VAE and target."""
    model = build_model(replace(recipe, fusion=replace(recipe.fusion, edit_layout=layout))).eval()
    proc = model.und.processor
    encoded = proc.encode(["red .", _image(), "make the circle green"])
    und = proc.collate([encoded])
    latents = model.gen.vae.encode(torch.zeros(1, 3, 32, 32))
    gen = gen_inputs(torch.randn_like(latents), torch.full((1,), 0.5), latents,
                     torch.ones(1, dtype=torch.bool), torch.tensor(encoded.vae_orders))
    n_slot = model.gen.tokens_per_slot(*latents.shape[-2:])
    joint = model._masks(und, gen, 2 * n_slot)[0].dense()[0, 0]
    ids, n_und = und.input_ids[0], und.input_ids.shape[1]
    vit = (und.segment[0] == VIT).nonzero().flatten()
    marks = torch.isin(ids, torch.tensor([proc.vision_start_id, proc.vision_end_id]))
    parts = {"marks": marks.nonzero().flatten(), "image": (ids == proc.image_token_id).nonzero().flatten(),
             "before": torch.arange(int(vit[0])), "after": torch.arange(int(vit[-1]) + 1, n_und),
             "vae": torch.arange(n_und, n_und + n_slot), "target": torch.arange(n_und + n_slot, n_und + 2 * n_slot)}
    return joint, parts


def _image():
    from PIL import Image

    return Image.new("RGB", (32, 32), (200, 30, 30))


def _sees(joint, queries, keys) -> torch.Tensor:
    return joint[queries][:, keys]


@pytest.mark.parametrize("layout", ["vae_first", "vit_first"])
def test_vision_marks_and_their_image_are_one_split(tiny_recipe, layout):
    joint, p = _joint_mask(tiny_recipe.config, layout)
    assert len(p["marks"]) == 2 and len(p["image"]) > 0
    assert _sees(joint, p["marks"], p["image"]).all()  # <|vision_start|> sees its image...
    assert _sees(joint, p["image"], p["marks"]).all()  # ...and the image sees <|vision_end|>
    assert _sees(joint, p["after"], torch.cat([p["marks"], p["image"], p["vae"]])).all()
    assert not _sees(joint, p["before"], torch.cat([p["marks"], p["image"], p["vae"]])).any()
    outside = torch.cat([p["before"], p["marks"], p["image"], p["after"], p["vae"]])
    assert not _sees(joint, outside, p["target"]).any()  # nothing outside the noisy split sees it
    assert _sees(joint, p["target"], torch.cat([p["marks"], p["image"], p["vae"]])).all()


def test_edit_layout_orders_the_vit_and_vae_splits(tiny_recipe):
    joint, p = _joint_mask(tiny_recipe.config, "vae_first")
    split = torch.cat([p["marks"], p["image"]])  # the ViT split
    assert _sees(joint, split, p["vae"]).all() and not _sees(joint, p["vae"], split).any()
    joint, p = _joint_mask(tiny_recipe.config, "vit_first")
    split = torch.cat([p["marks"], p["image"]])
    assert _sees(joint, p["vae"], split).all() and not _sees(joint, split, p["vae"]).any()
