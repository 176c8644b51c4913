"""What the tiny budget allows: a 1M-parameter conv UNet on the same shapes world, scorer and minutes.

    python benchmarks/tiny_reference.py --minutes 5     # trains on 1 CPU thread, then scores
    python benchmarks/tiny_reference.py --minutes 10

Not lightbagel: a yardstick for docs/tiny.md. It trains a plain text-conditioned conv UNet (3
resolutions, FiLM conditioning; the caption through a 2-layer transformer, mean-pooled, so it cannot
express a relation) with the tiny default's flow matching (logit-normal t, velocity, 10% text
dropout) on freshly rendered T2I scenes, for a fixed wall time. It then samples the T2I categories of
`lightbagel-eval` (same prompts and exact checks; Euler, 30 steps, text guidance 2) and measures how
much a token's neighbours react to it (`neighbour_influence`, also printed by loss_floor.py for a
lightbagel export): the two numbers that separate "the budget is too small" from "the DiT uses it
badly".
"""

from __future__ import annotations

import argparse
import math
import random
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from lightbagel import shapes
from lightbagel.evaluation.synthetic import CATEGORIES, passed, synthetic_items

VOCAB = {word: i + 1 for i, word in enumerate(shapes.vocabulary())}  # 0 pads
MAX_WORDS = 10
WIDTH = 128  # conditioning width


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=5.0, help="training wall time")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--per-category", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def tokens(captions: list[str]) -> torch.Tensor:
    out = torch.zeros(len(captions), MAX_WORDS, dtype=torch.long)
    for i, text in enumerate(captions):
        ids = [VOCAB[w] for w in text.split()]
        out[i, :len(ids)] = torch.tensor(ids)
    return out


def t2i_batch(rng: random.Random, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    scenes = [shapes.sample_scene(rng) for _ in range(n)]
    pixels = np.stack([np.asarray(shapes.render(s, 32)) for s in scenes])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    return images, tokens([shapes.caption(s) for s in scenes])


class TextEncoder(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.embed = nn.Embedding(len(VOCAB) + 1, dim)
        self.pos = nn.Parameter(torch.randn(MAX_WORDS, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(ids) + self.pos, src_key_padding_mask=ids == 0)
        keep = (ids != 0).float().unsqueeze(-1)
        return (h * keep).sum(1) / keep.sum(1).clamp(min=1)


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    freqs = torch.exp(-math.log(1000) * torch.arange(dim // 2) / (dim // 2))
    angles = t[:, None] * 1000 * freqs
    return torch.cat([angles.sin(), angles.cos()], 1)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(WIDTH, 2 * c_out)
        self.norm2, self.conv2 = nn.GroupNorm(8, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(cond)[:, :, None, None].chunk(2, 1)
        return self.skip(x) + self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))


class UNet(nn.Module):
    """32 -> 16 -> 8 px, widths 32 / 64 / 96, one residual block per level and side."""

    def __init__(self, widths=(32, 64, 96)):
        super().__init__()
        self.text = TextEncoder(WIDTH)
        self.time = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.SiLU(), nn.Linear(WIDTH, WIDTH))
        self.stem = nn.Conv2d(3, widths[0], 3, padding=1)
        ins = (widths[0], *widths[:-1])
        self.down = nn.ModuleList(ResBlock(i, o) for i, o in zip(ins, widths))
        self.mid = ResBlock(widths[-1], widths[-1])
        outs = (*widths[-2::-1], widths[0])
        self.up = nn.ModuleList(ResBlock(2 * i, o) for i, o in zip(widths[::-1], outs))
        self.out = nn.Conv2d(widths[0], 3, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        cond = self.text(ids) * (~drop).float()[:, None] + self.time(time_embedding(t, WIDTH))
        h, skips = self.stem(x), []
        for i, block in enumerate(self.down):
            h = block(h, cond)
            skips.append(h)
            h = F.avg_pool2d(h, 2) if i < len(self.down) - 1 else h
        h = self.mid(h, cond)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], 1), cond)
            h = F.interpolate(h, scale_factor=2.0) if i < len(self.up) - 1 else h
        return self.out(h)


def train(net: UNet, args) -> int:
    rng, opt = random.Random(args.seed), torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
    ema = [p.detach().clone() for p in net.parameters()]
    start, step, n = time.perf_counter(), 0, args.batch_size
    while time.perf_counter() - start < args.minutes * 60:
        x0, ids = t2i_batch(rng, n)
        t, noise = torch.sigmoid(torch.randn(n)), torch.randn_like(x0)
        xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
        loss = F.mse_loss(net(xt, t, ids, torch.rand(n) < 0.1), noise - x0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        with torch.no_grad():
            for avg, p in zip(ema, net.parameters()):
                avg.lerp_(p, 0.01)
        if step % 200 == 0:
            print(f"step {step}  {time.perf_counter() - start:.0f} s  loss {loss.item():.4f}", flush=True)
    with torch.no_grad():
        for avg, p in zip(ema, net.parameters()):
            p.copy_(avg)
    return step


@torch.no_grad()
def generate(net: UNet, prompts: list[str], seed: int, steps: int = 30, guidance: float = 2.0) -> list[Image.Image]:
    ids, n = tokens(prompts), len(prompts)
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    times = torch.linspace(1, 0, steps + 1)
    keep, drop = torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)
    for now, nxt in zip(times[:-1], times[1:]):
        t = torch.full((n,), float(now))
        cond, uncond = net(x, t, ids, keep), net(x, t, ids, drop)
        x = x + (nxt - now) * (uncond + guidance * (cond - uncond))
    pixels = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(p) for p in pixels]


@torch.no_grad()
def neighbour_influence(velocity, x: torch.Tensor, block: int, bump: float = 1.0) -> tuple[float, float]:
    """How much other cells react when the centre `block` x `block` cell's input moves by `bump`:
    the mean |change of the output| of its 8 neighbours, and of the cells further away, each over
    the centre's own. `velocity` maps (B, C, H, W) inputs to outputs of the same layout. A model
    whose cells decide alone gives (0, 0); a local one (a conv) gives neighbours > far."""
    h, w = x.shape[-2] // block, x.shape[-1] // block
    bumped = x.clone()
    r, c = h // 2, w // 2
    bumped[..., r * block:(r + 1) * block, c * block:(c + 1) * block] += bump
    change = (velocity(bumped) - velocity(x)).abs()
    cells = F.avg_pool2d(change.mean(1, keepdim=True), block)[:, 0]  # (B, h, w)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ring = torch.maximum((rows - r).abs(), (cols - c).abs())
    own = cells[:, r, c]
    near, far = ((cells[:, where].mean(1) / own).mean().item() for where in (ring == 1, ring >= 2))
    return near, far


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    net = UNet()
    print(f"conv UNet: {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters, "
          f"{args.minutes} min on {args.threads} thread(s)")
    steps = train(net, args)
    items = [it for it in synthetic_items(args.per_category) if it.category in CATEGORIES]
    wins: dict[str, list[bool]] = {}
    for start in range(0, len(items), 64):
        chunk = items[start:start + 64]
        for item, image in zip(chunk, generate(net, [it.prompt for it in chunk], seed=start)):
            wins.setdefault(item.category, []).append(passed(item, image))
    scores = {k: sum(v) / len(v) for k, v in wins.items()}
    x0, ids = t2i_batch(random.Random(777), 64)
    t = torch.full((64,), 0.5)
    xt = 0.5 * x0 + 0.5 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(777))
    keep = torch.zeros(64, dtype=torch.bool)
    near, far = neighbour_influence(lambda x: net(x, t, ids, keep), xt, block=4)
    print(f"\n{steps} steps x {args.batch_size} samples in {args.minutes} min")
    print("| " + " | ".join(scores) + " | overall | influence on neighbours / further cells (t = 0.5, 4 px cells) |")
    print("|" + "---:|" * (len(scores) + 2))
    print("| " + " | ".join(f"{v:.3f}" for v in scores.values())
          + f" | {sum(scores.values()) / len(scores):.3f} | {near:.3f} / {far:.3f} |")


if __name__ == "__main__":
    main()
