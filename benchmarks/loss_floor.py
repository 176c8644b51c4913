"""Where a tiny model's flow-matching loss sits against its floor, per flow time t (docs/tiny.md).

    python benchmarks/loss_floor.py outputs/tiny/export            # 64 held-out T2I prompts
    python benchmarks/loss_floor.py outputs/tiny/export --n 128 --candidates 1024

For held-out shapes-world captions it prints, per t-bin, the velocity MSE of the model with the
prompt and with the text dropped (as classifier-free guidance drops it), next to a Monte Carlo
estimate of the floor: the Bayes-optimal denoiser E[x0 | x_t, prompt] is a softmax-weighted mean
of candidate renders of that same caption (fresh positions and sizes), and its velocity error is
|x0 - E[x0 | x_t]|^2 / t^2. Without the true image among the candidates the estimate is an upper
bound at low t (the true posterior collapses onto x0, no candidate is that close); with it, a
lower bound (it wins too easily): both are printed, as "lower-upper". The unconditional floor
draws candidates from every caption. Then, per t, the share of one-step x0 predictions x_t - t v that pass the exact
check of `shapes.score`; the share that passes after integrating the ODE (Euler, conditional
velocity) from the truth noised to t; the entropy of the DiT self-attention over the target
tokens (log 64 = uniform on an 8 x 8 grid): how locally the DiT can look; and how much a token's
8 neighbours react when its input moves (benchmarks/tiny_reference.py measures the same on a conv UNet).
"""

from __future__ import annotations

import argparse
import math
import random
from contextlib import contextmanager
from dataclasses import replace

import torch
from tiny_reference import neighbour_influence  # benchmarks/: the same measure for the conv reference

from lightbagel import flow_matching as fm
from lightbagel import shapes
from lightbagel.backbones.generation import wan
from lightbagel.data.collate import Collator, image_to_tensor, tensor_to_image
from lightbagel.inference.pipeline import LightBagelPipeline
from lightbagel.inputs import gen_inputs
from lightbagel.training.module import drop_conditions

BINS = (0.1, 0.3, 0.5, 0.7, 0.9)  # centres of five even t-bins
CHECK_TIMES = (0.2, 0.4, 0.6, 0.8, 1.0)  # the one-step x0 check of issue 11, and pure noise


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("export", help="a lightbagel-fit export dir")
    p.add_argument("--n", type=int, default=64, help="held-out T2I prompts")
    p.add_argument("--candidates", type=int, default=512, help="renders per caption for the floor")
    p.add_argument("--seed", type=int, default=777)
    return p.parse_args(argv)


def same_caption(rng: random.Random, scene: shapes.Scene) -> shapes.Scene:
    """A fresh draw of `sample_scene` conditioned on `scene`'s caption (rejection on the relation)."""
    kinds = [(o.shape, o.color) for o in scene.objects]
    while True:
        drawn = shapes.sample_scene(rng, max_objects=len(kinds))
        if len(drawn.objects) != len(kinds):
            continue
        candidate = shapes.Scene([replace(o, shape=s, color=c) for o, (s, c) in zip(drawn.objects, kinds)])
        if shapes.caption(candidate) == shapes.caption(scene):
            return candidate


def latents(vae, scenes: list[shapes.Scene], size: int) -> torch.Tensor:
    images = torch.stack([image_to_tensor(shapes.render(s, size)) for s in scenes])
    return vae.encode(images).flatten(1)


def floor(x0: torch.Tensor, noise: torch.Tensor, t: float, candidates: torch.Tensor) -> float:
    """Per-element velocity MSE of the Bayes-optimal denoiser over `candidates` (M, D), for one x0 (D,)."""
    xt = (1 - t) * x0 + t * noise
    logw = -(xt - (1 - t) * candidates).pow(2).sum(1) / (2 * t * t)
    mean = (torch.softmax(logw, 0)[:, None] * candidates).sum(0)
    return ((x0 - mean).pow(2).mean() / (t * t)).item()


def bounds(x0: torch.Tensor, noise: torch.Tensor, t: float, pools: list[torch.Tensor]) -> str:
    """"lower-upper": the mean floor over samples with and without each true image among its candidates."""
    upper = sum(floor(a, b, t, pool) for a, b, pool in zip(x0, noise, pools)) / len(x0)
    lower = sum(floor(a, b, t, torch.cat([pool, a[None]])) for a, b, pool in zip(x0, noise, pools)) / len(x0)
    return f"{lower:.4f}-{upper:.4f}"


def prompts(pipe: LightBagelPipeline, batch, drop_text: bool):
    """The batch's und inputs with every condition shown, or with the text hidden as CFG's null branch hides it."""
    uniform = torch.ones(len(batch), 3)
    if drop_text:
        uniform[:, 0] = 0.0  # below any text_dropout
    return drop_conditions(batch, replace(pipe.recipe.objective, text_dropout=0.5), uniform)[0]


@torch.no_grad()
def velocities(pipe: LightBagelPipeline, batch, x0, noise, t: float, drop_text: bool) -> torch.Tensor:
    tt = torch.full((len(x0),), t)
    return pipe.model(prompts(pipe, batch, drop_text), gen_inputs(fm.interpolate(x0, noise, tt), tt)).velocity.float()


def influence(pipe: LightBagelPipeline, batch, x0, noise, t: float = 0.5) -> tuple[float, float]:
    """`tiny_reference.neighbour_influence` of the DiT: one token's input moved, its 8 neighbours' outputs."""
    gen, und, tt = pipe.model.gen, prompts(pipe, batch, False), torch.full((len(x0),), t)
    velocity = lambda x: gen.unpatchify(pipe.model(und, gen_inputs(x, tt)).velocity.float(), 1, *x.shape[-2:])[:, :, 0]  # noqa: E731
    return neighbour_influence(velocity, fm.interpolate(x0, noise, tt), block=gen.patch_size[1])


def passes(pipe, x0_hat: torch.Tensor, scenes: list[shapes.Scene]) -> float:
    images = pipe.model.gen.vae.decode(x0_hat).clamp(-1, 1)
    return sum(shapes.score(tensor_to_image(im), s)["overall"] for im, s in zip(images, scenes)) / len(scenes)


@torch.no_grad()
def from_truth(pipe, batch, x0, noise, t0: float, scenes) -> float:
    """Pass rate of Euler sampling (30 t0 steps, no guidance) started at the truth noised to t0."""
    times = torch.linspace(t0, 0.0, max(4, round(30 * t0)) + 1)
    x, gen = fm.interpolate(x0, noise, torch.full((len(x0),), t0)), pipe.model.gen
    for now, nxt in zip(times[:-1], times[1:]):
        v = pipe.model(batch.und, gen_inputs(x, torch.full((len(x0),), float(now)))).velocity
        x = x + (nxt - now) * gen.unpatchify(v, 1, *x.shape[-2:])[:, :, 0]
    return passes(pipe, x, scenes)


@contextmanager
def attention_entropy(found: list):
    """Records the mean entropy of every DiT self-attention call made inside the block."""
    plain = wan.attend

    def spy(q, k, v, mask):
        p = torch.softmax(q.float() @ k.float().transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
        found.append(-(p * p.clamp_min(1e-12).log()).sum(-1).mean().item())
        return plain(q, k, v, mask)

    wan.attend = spy
    try:
        yield found
    finally:
        wan.attend = plain


def main(argv=None) -> None:
    args = parse_args(argv)
    pipe = LightBagelPipeline.from_pretrained(args.export)
    gen, size = pipe.model.gen, pipe.recipe.data.image_size
    rng = random.Random(args.seed)
    scenes = [shapes.sample_scene(rng) for _ in range(args.n)]
    samples = [{"text": shapes.caption(s), "source": None, "target": shapes.render(s, size)} for s in scenes]
    batch = Collator(pipe.model.und.processor, pipe.recipe.data.vit_image_size)(samples)
    x0 = gen.vae.encode(batch.target)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(args.seed))  # the same for every model
    target = gen.patchify(fm.velocity(x0, noise).unsqueeze(2))
    flat0, flatn = x0.flatten(1), noise.flatten(1)
    pools = [latents(gen.vae, [same_caption(rng, s) for _ in range(args.candidates)], size) for s in scenes]
    anything = latents(gen.vae, [shapes.sample_scene(rng) for _ in range(args.candidates * 4)], size)
    print(f"{args.export}: {args.n} held-out T2I prompts, {args.candidates} candidate renders per caption\n")
    print("| t | loss, prompt | loss, text dropped | floor, prompt | floor, no prompt |")
    print("|---:|---:|---:|---:|---:|")
    for t in BINS:
        cond, uncond = (
            (velocities(pipe, batch, x0, noise, t, drop) - target).pow(2).mean().item() for drop in (False, True))
        f_cond, f_any = (bounds(flat0, flatn, t, p) for p in (pools, [anything] * args.n))
        print(f"| {t:.1f} | {cond:.4f} | {uncond:.4f} | {f_cond} | {f_any} |")
    print("\n| t | one-step x0 passes | ODE from the noised truth passes | DiT attention entropy per block |")
    print("|---:|---:|---:|---|")
    for t in CHECK_TIMES:
        with attention_entropy([]) as entropy:
            v = gen.unpatchify(velocities(pipe, batch, x0, noise, t, False), 1, *x0.shape[-2:])[:, :, 0]
        one_step = passes(pipe, fm.interpolate(x0, noise, torch.full((args.n,), t)) - t * v, scenes)
        blocks = ", ".join(f"{e:.2f}" for e in entropy)
        print(f"| {t:.1f} | {one_step:.2f} | {from_truth(pipe, batch, x0, noise, t, scenes):.2f} | {blocks} |")
    near, far = influence(pipe, batch, x0, noise)
    print(f"\nOne token's input moved at t = 0.5: mean output change of its 8 neighbours {near:.3f}, "
          f"of the tokens further away {far:.3f} (over its own)")


if __name__ == "__main__":
    main()
