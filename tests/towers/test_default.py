"""The default (recipes/tiny.yaml) is the paper's recipe in miniature: it fuses the shipped towers,
freezes the VLM and the VAE, and starts training from the shipped DiT with fusion adding nothing."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from lightbagel.backbones.loading import resolve_pretrained
from lightbagel.inputs import gen_inputs
from lightbagel.model import build_model
from lightbagel.recipe import load_recipe
from lightbagel.training.module import LightBagelModule

TINY = Path(__file__).resolve().parents[2] / "recipes" / "tiny.yaml"


def test_the_default_names_the_shipped_towers_and_trains_only_the_dit_and_fusion():
    recipe = load_recipe(TINY).config
    und, gen = recipe.understanding, recipe.generation
    assert (und.pretrained, gen.pretrained, gen.vae.pretrained) == ("shapes_qwen2_5_vl", "shapes_wan_dit",
                                                                   "shapes_wan_vae")
    assert und.freeze and gen.vae.freeze and not gen.freeze
    module = LightBagelModule(recipe)
    trainable = [name for name, p in module.model.named_parameters() if p.requires_grad]
    assert not [n for n in trainable if n.startswith(("und.", "gen.vae."))]
    assert any(n.startswith("gen.dit.") for n in trainable) and any(n.startswith("fusion.") for n in trainable)

def test_at_step_0_the_dit_is_the_shipped_one_and_fusion_adds_nothing(make_batch):
    recipe = load_recipe(TINY).config
    module = LightBagelModule(recipe)  # what lightbagel-fit trains
    shipped = load_file(Path(resolve_pretrained("shapes_wan_dit")) / "diffusion_pytorch_model.safetensors")
    dit = module.model.gen.dit.state_dict()
    assert shipped.keys() <= dit.keys()
    for name, weight in shipped.items():
        assert torch.equal(dit[name], weight.to(dit[name].dtype)), name
    model = module.model.eval()
    alone = build_model(load_recipe(TINY, ["fusion=none"]).config).eval()  # the same towers, no fusion
    batch = make_batch(model)
    with torch.no_grad():
        shape = model.gen.vae.encode(torch.zeros(1, 3, 32, 32)).shape[1:]
        gen = gen_inputs(torch.randn(len(batch), *shape, generator=torch.Generator().manual_seed(0)),
                         torch.rand(len(batch), generator=torch.Generator().manual_seed(1)))
        fused, ref = model(batch.und, gen).velocity, alone(batch.und, gen).velocity
    # Exact by construction: each zero-initialised fusion block adds 0 * x + 0.
    torch.testing.assert_close(fused, ref, rtol=0, atol=0)
