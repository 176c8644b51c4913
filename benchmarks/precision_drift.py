"""How much of 10 AdamW steps survives in DiT-shaped weights: pure bf16 against the recipe's precision.

    python benchmarks/precision_drift.py                                  # 3072 x 3072, lr 3e-5 and 3e-6
    python benchmarks/precision_drift.py --recipe recipes/lightbagel_7b_5b.yaml --dim 1024 --steps 10

One Wan-sized linear layer (weights std 0.02, as the DiT's) learns a random regression for
`--steps` AdamW steps (the recipe's betas and eps, no weight decay) at each learning rate: the
recipe's (3e-5) and a warm-up one (3e-6). Three runs start from the same weights and batches:
fp32 throughout (the reference), BEFORE = pure bf16 (`trainer.precision: bf16-true`: weights and
AdamW state in bf16), AFTER = the recipe's precision plan (precision.py: fp32 masters and state,
bf16 compute under autocast). Reported per run: the fraction of entries that changed at all, the
drift |w_T - w_0| relative to the fp32 run's, and the drift's projection on the fp32 drift (the
part of it that went where fp32 training went; rounding to a full bf16 ulp adds length, not progress).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from lightbagel.precision import PRECISIONS, Precision, precision_of
from lightbagel.recipe import load_recipe


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="recipes/lightbagel_7b_5b.yaml")
    p.add_argument("--dim", type=int, default=3072, help="square layer width (Wan2.2-5B: 3072)")
    p.add_argument("--tokens", type=int, default=256, help="tokens per step")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--lrs", type=float, nargs="+", default=[3e-5, 3e-6])
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def batches(dim: int, tokens: int, steps: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed + 1)
    teacher = torch.randn(dim, dim, generator=g) * 0.02
    xs = [torch.randn(tokens, dim, generator=g) for _ in range(steps)]
    return [(x, x @ teacher.t()) for x in xs]


def train(precision: Precision, w0: torch.Tensor, data, lr: float, betas, eps: float) -> torch.Tensor:
    w = nn.Parameter(w0.to(precision.master).clone())
    opt = torch.optim.AdamW([w], lr=lr, betas=betas, eps=eps, weight_decay=0.0)
    mixed = precision.compute != torch.float32
    for x, y in data:
        with torch.autocast("cpu", dtype=precision.compute, enabled=mixed):
            out = x @ w.t()
        loss = (out.float() - y).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return w.detach().float()


def report(name: str, w0: torch.Tensor, w: torch.Tensor, reference: torch.Tensor) -> str:
    changed = (w != w0).float().mean().item()
    step, ref = (w - w0).flatten(), (reference - w0).flatten()
    drift = step.norm().item() / ref.norm().item()
    along = torch.dot(step, ref).item() / torch.dot(ref, ref).item()  # the part that goes where fp32 went
    return f"  {name:<30} changed {changed:7.2%}   |drift| vs fp32 {drift:7.2%}   along fp32 {along:7.2%}"


def main(argv=None) -> None:
    args = parse_args(argv)
    recipe = load_recipe(args.recipe).config
    runs = {"fp32": PRECISIONS["32-true"], "BEFORE pure bf16 (bf16-true)": PRECISIONS["bf16-true"],
            f"AFTER recipe ({recipe.trainer.precision})": precision_of(recipe.trainer)}
    g = torch.Generator().manual_seed(args.seed)
    # The bf16 runs start from the bf16 copy of the weights: the same start for all three.
    w0 = (torch.randn(args.dim, args.dim, generator=g) * 0.02).bfloat16().float()
    data = batches(args.dim, args.tokens, args.steps, args.seed)
    betas, eps = tuple(recipe.optim.betas), recipe.optim.eps
    print(f"{args.dim} x {args.dim} weights (std 0.02), {args.steps} AdamW steps, {args.tokens} tokens per step")
    for lr in args.lrs:
        print(f"lr {lr:g}")
        results = {name: train(p, w0, data, lr, betas, eps) for name, p in runs.items()}
        for name, w in results.items():
            print(report(name, w0, w, results["fp32"]))


if __name__ == "__main__":
    main()
