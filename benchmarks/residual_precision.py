"""The DiT's output error under bf16 compute, with its residual stream and head in bf16 or fp32.

    python benchmarks/residual_precision.py                      # 12 blocks, width 512, 256 tokens
    python benchmarks/residual_precision.py --blocks 30 --heads 24  # Wan2.2-5B's depth and width

A random Wan DiT (diffusers' initialisation; the tiny card's channels, `--blocks` deep, `--heads` x
128 wide) runs one 32 x 32-latent image at t = 0.5 through the adapter (embed, blocks, head), as a
bf16-mixed training step does: fp32 weights, bf16 autocast. Against the same model in fp32, it
prints the relative RMS error of the velocity for: everything as autocast leaves it (the residual
stream in bf16), an fp32 residual stream, and an fp32 residual stream and head (Wan2.2's way,
`trainer.fp32_residual: true`; backbones/generation/wan.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lightbagel.inputs import gen_inputs
from lightbagel.recipe import load_recipe
from lightbagel.registry import GENERATION

TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml"
VARIANTS = {"bf16 residual, bf16 head": (False, False), "fp32 residual, bf16 head": (True, False),
            "fp32 residual, fp32 head (Wan)": (True, True)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--heads", type=int, default=4, help="attention heads of 128 dims (Wan2.2-5B: 24)")
    p.add_argument("--latent", type=int, default=32, help="latent side: (side / 2)^2 tokens")
    p.add_argument("--seeds", type=int, default=3)
    return p.parse_args(argv)


def build_dit(blocks: int, heads: int, seed: int):
    width = heads * 128
    overrides = ["generation=tiny_wan2_1", f"generation.config.num_layers={blocks}",
                 f"generation.config.num_attention_heads={heads}", "generation.config.attention_head_dim=128",
                 f"generation.config.ffn_dim={4 * width}", "generation.config.rope_max_seq_len=1024"]
    torch.manual_seed(seed)
    return GENERATION.get("wan")(load_recipe(TINY, overrides).config.generation).eval()


@torch.no_grad()
def velocity(gen, latents: torch.Tensor, t: torch.Tensor, bf16: bool) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        h, rope, cond = gen.embed(gen_inputs(latents, t))
        for i in range(gen.num_layers):
            h = gen.block(i, h, None, rope, cond)
        return gen.head(h, cond).float()


def errors(blocks: int, heads: int, side: int, seed: int) -> dict[str, float]:
    gen = build_dit(blocks, heads, seed)
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, gen.dit.config.in_channels, side, side, generator=g)
    t = torch.full((1,), 0.5)
    reference = velocity(gen, latents, t, bf16=False)
    out = {}
    for name, (residual, head) in VARIANTS.items():
        gen.fp32_residual, gen.fp32_head = residual, head
        v = velocity(gen, latents, t, bf16=True)
        out[name] = float((v - reference).norm() / reference.norm())
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    runs = [errors(args.blocks, args.heads, args.latent, seed) for seed in range(args.seeds)]
    tokens = (args.latent // 2) ** 2
    print(f"random Wan DiT: {args.blocks} blocks, width {args.heads * 128}, {tokens} tokens, bf16 autocast on CPU")
    print("velocity error relative to fp32 (RMS), per seed and mean:")
    for name in VARIANTS:
        values = [r[name] for r in runs]
        print(f"  {name:32s} " + "  ".join(f"{v:.2e}" for v in values) + f"   mean {sum(values) / len(values):.2e}")


if __name__ == "__main__":
    main()
