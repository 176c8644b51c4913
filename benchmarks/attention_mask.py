"""Time of one attention call under the generalized causal rule at a packed-sequence length:
masked SDPA (the dense (1, 1, L, L) bool reference), SDPA per packed sample (fusion/per_sample.py),
eager flex_attention, compiled flex_attention (block-sparse, no (L, L) tensor) and unmasked SDPA,
interleaved in one run so all see the same machine.

    .venv/bin/python benchmarks/attention_mask.py --length 16384          # CPU, forward only
    python benchmarks/attention_mask.py --device cuda --length 16384 --backward

The layout is a mixed T2I / edit stream: samples of text (causal), one or two image splits and a
noisy target, packed back to back with their own orders (`OrderMask`, fusion/mask.py). Eager flex
builds full scores, so it is skipped past `--eager-max` tokens. The compile time is printed apart.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lightbagel.fusion.flex import order_block_mask
from lightbagel.fusion.mask import OrderMask
from lightbagel.inputs import TARGET_ORDER


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=16384)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--eager-max", type=int, default=4096, help="longest sequence eager flex is timed at")
    p.add_argument("--backward", action="store_true", help="time forward + backward (flex: GPU only)")
    p.add_argument("--no-compile", action="store_true", help="leave compiled flex out (CPU compiles take minutes)")
    return p.parse_args(argv)


def packed_layout(length: int, seed: int = 0) -> OrderMask:
    """Whole samples back to back, each with its own orders and id: 20-100 text tokens, a 256-token
    source split on every other sample (an edit), a 256-token target."""
    g = torch.Generator().manual_seed(seed)
    orders, samples = [], []
    while sum(len(o) for o in orders) < length:
        text = int(torch.randint(20, 100, (1,), generator=g))
        order = list(range(text)) + [text] * (256 * (len(orders) % 2)) + [TARGET_ORDER] * 256
        orders.append(torch.tensor(order))
        samples.append(torch.full((len(order),), len(samples)))
    order, sample = torch.cat(orders)[:length][None], torch.cat(samples)[:length][None]
    return OrderMask.square(order, torch.ones_like(order, dtype=torch.bool), sample=sample)


def timed(fn, device: str, backward: bool) -> float:
    start = time.perf_counter()
    out = fn()
    if backward:
        out.sum().backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None) -> None:
    args = parse_args(argv)
    shape = (1, args.heads, args.length, args.head_dim)
    q, k, v = (torch.randn(shape, device=args.device, requires_grad=args.backward) for _ in range(3))
    mask = packed_layout(args.length)
    mask = OrderMask.square(mask.q_order.to(args.device), mask.k_valid.to(args.device),
                            sample=mask.q_sample.to(args.device))
    backends = ("dense", "per_sample", "flex", "flex_compiled")
    masks = {b: OrderMask(**{**vars(mask), "backend": b, "_views": {}}) for b in backends}
    runs = {"masked SDPA (dense bool)": lambda: masks["dense"].attend(q, k, v),
            "SDPA per sample": lambda: masks["per_sample"].attend(q, k, v),
            "flex compiled": lambda: masks["flex_compiled"].attend(q, k, v),
            "unmasked SDPA": lambda: F.scaled_dot_product_attention(q, k, v)}
    if args.length <= args.eager_max:
        runs["flex eager"] = lambda: masks["flex"].attend(q, k, v)
    print(f"length {args.length}, {args.heads} heads x {args.head_dim}, device {args.device}")
    if args.no_compile:
        del runs["flex compiled"]
    else:
        first = timed(runs["flex compiled"], args.device, args.backward)
        print(f"first call (compile + block mask) of flex compiled: {first:.1f} s")
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():  # interleaved: every variant sees the same machine state
            times[name].append(timed(fn, args.device, args.backward))
    base = statistics.median(times["unmasked SDPA"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:26s} median {med * 1e3:9.1f} ms   x{med / base:5.2f} of unmasked SDPA")
    dense_mib = mask.q_order.shape[1] ** 2 / 2 ** 20
    tiles = order_block_mask(mask)
    table_mib = sum(t.numel() * t.element_size() for t in tiles.as_tuple() if isinstance(t, torch.Tensor)) / 2 ** 20
    print(f"dense mask: {dense_mib:.0f} MiB bool; block mask tables: {table_mib:.2f} MiB, "
          f"{tiles.sparsity():.1f}% of tiles skipped")


if __name__ == "__main__":
    main()
