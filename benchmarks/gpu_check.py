"""The full-size path on one GPU, in one run of under 8 minutes (H100 / H200), or at toy sizes on CPU.

    python benchmarks/gpu_check.py              # one GPU: the 7B+5B model at full width, 2 + 2 blocks
    python benchmarks/gpu_check.py --dry-run    # CPU, the tiny model: checks the script itself

Prints, for recipes/lightbagel_7b_5b.yaml at full width and reduced depth (2 VLM layers, 2 DiT
blocks and so 2 fusion blocks, a 2-block ViT, random weights, nothing downloaded):
(a) one bf16-mixed training step (fp32 masters, AdamW, activation checkpointing as the GPU card
    sets it) on a packed row of ~`--tokens` tokens: step time, tokens/s, MFU against `--peak-tflops`,
    peak memory, and what `lightbagel-plan` predicts for the same shape on 1 GPU;
(b) the same batch as padded rows against packed ones;
(c) the attention backends on the packed rule, forward and backward, and the tile fraction flex
    skips (benchmarks/attention_mask.py at the fused attention's heads and length);
(d) one 1024 px edit, caches on against off (benchmarks/inference_cache.py).
Paste its output into docs/full_size.md ("Measured on a GPU").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import fields, is_dataclass, replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # attention_mask.py, inference_cache.py

from lightbagel.data.collate import Collator  # noqa: E402
from lightbagel.model import without_weights  # noqa: E402
from lightbagel.packing import layout_tokens  # noqa: E402
from lightbagel.recipe import load_recipe  # noqa: E402
from lightbagel.training.callbacks import validation_samples  # noqa: E402
from lightbagel.training.randomness import sample_seeds  # noqa: E402

PAPER, TINY = REPO / "recipes" / "lightbagel_7b_5b.yaml", REPO / "recipes" / "tiny.yaml"
# Full width, reduced depth, random weights (no download): what one GPU holds with room to spare.
REDUCED = ["understanding.load_weights=false", "generation.load_weights=false", "generation.vae.load_weights=false",
           "understanding.config.text_config.num_hidden_layers=2", "understanding.config.vision_config.depth=2",
           "understanding.config.vision_config.fullatt_block_indexes=[1]", "generation.config.num_layers=2",
           "trainer.ema.enabled=false"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, the tiny recipe, toy sizes")
    p.add_argument("--tokens", type=int, default=16384, help="tokens of the packed row (the paper's 16,384)")
    p.add_argument("--image-size", type=int, default=512, help="VAE image side of the training samples")
    p.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    p.add_argument("--edit-size", type=int, default=1024)
    p.add_argument("--edit-steps", type=int, default=30)
    return p.parse_args(argv)


class Check:
    """What the run is at: recipe, device, sizes."""

    def __init__(self, args):
        self.dry = args.dry_run
        self.device = "cpu" if self.dry else "cuda"
        if not self.dry and not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA GPU here; run with --dry-run to check the script on CPU")
        self.recipe_path = TINY if self.dry else PAPER
        self.overrides = ["trainer.precision=bf16-mixed", "generation=tiny_wan2_1"] if self.dry else REDUCED
        self.cfg = without_weights(load_recipe(self.recipe_path, self.overrides).config)
        self.tokens = 300 if self.dry else args.tokens
        self.image_size = 32 if self.dry else args.image_size
        self.steps = 1 if self.dry else args.steps
        self.args = args

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def peak_gib(self) -> float:
        return torch.cuda.max_memory_allocated() / 2**30 if self.device == "cuda" else float("nan")


def to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if is_dataclass(value):
        return replace(value, **{f.name: to_device(getattr(value, f.name), device) for f in fields(value)
                                 if f.init and not f.name.startswith("_")})
    return value


def packed_batch(module, check: Check):
    """Shapes-world samples (T2I and edits alternating) at `image_size`, as many as fill `tokens`."""
    collate = Collator(module.model.und.processor, check.cfg.data.vit_image_size)
    multiple = module.model.gen.vae_multiple  # pixels per DiT token side
    n = 2
    while True:
        batch = collate(validation_samples(n + 2, check.image_size, seed=11))
        if sum(layout_tokens(batch, multiple, "packed")) > check.tokens:
            break
        n += 2
    batch = collate(validation_samples(n, check.image_size, seed=11))
    return to_device(batch, check.device), multiple


def build_module(check: Check):
    from lightbagel.training.module import LightBagelModule

    module = LightBagelModule(check.cfg)
    module.configure_model()  # precision plan, activation checkpointing (no mesh: one device)
    return module.to(check.device)


def train_steps(module, batch, check: Check, layout: str) -> float:
    """Median seconds of a forward + backward + AdamW step after one warm-up."""
    module.recipe = replace(module.recipe, data=replace(module.recipe.data, packing=replace(
        module.recipe.data.packing, layout=layout)))
    params = [p for p in module.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-5, betas=(0.9, 0.95), eps=1e-8)
    seeds = sample_seeds(0, 0, 0, len(batch))
    times = []
    for i in range(1 + check.steps):
        check.sync()
        start = time.perf_counter()
        with torch.autocast(check.device, dtype=torch.bfloat16):
            loss, _ = module.flow_matching_loss(batch, seeds)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        check.sync()
        if i:
            times.append(time.perf_counter() - start)
    if not torch.isfinite(loss):
        raise SystemExit(f"gpu_check: non-finite loss {loss.item()} in the {layout} step")
    return statistics.median(times)


def planned(check: Check, seq_len: int):
    from lightbagel.planning import make_plan

    return make_plan(check.cfg, gpus=1, nodes=1, seq_len=seq_len, progress=False)


def section_training(check: Check) -> None:
    module = build_module(check)
    batch, multiple = packed_batch(module, check)
    und, gen = layout_tokens(batch, multiple, "packed")
    flops = module._batch_flops(batch)
    if check.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    packed = train_steps(module, batch, check, "packed")
    peak = check.peak_gib()
    padded = train_steps(module, batch, check, "padded")
    pad_und, pad_gen = layout_tokens(batch, multiple, "padded")
    plan = planned(check, und + gen)
    tflops = flops / packed / 1e12
    print(f"(a) training step, {check.recipe_path.name} {' '.join(check.overrides)}")
    print(f"    {len(batch)} samples at {check.image_size} px in one packed row: {und:,} und + {gen:,} gen tokens")
    print(f"    step {packed:.3f} s, {(und + gen) / packed:,.0f} tokens/s, {tflops:.1f} TFLOP/s = "
          f"MFU {tflops / check.args.peak_tflops:.1%} of {check.args.peak_tflops:.0f}, peak memory {peak:.2f} GiB")
    m = plan.memory
    print(f"    lightbagel-plan, 1 GPU, seq {und + gen:,}: {m.total_checkpointed / 2**30:.2f} GiB with act. ckpt "
          f"({m.total / 2**30:.2f} without), of which gather {m.gather / 2**30:.2f}, activations "
          f"{m.activations_checkpointed / 2**30:.2f}")
    print(f"(b) padded rows: {pad_und + pad_gen:,} token slots, step {padded:.3f} s = x{padded / packed:.2f} of packed")
    del module, batch
    if check.device == "cuda":
        torch.cuda.empty_cache()


def fusion_heads(check: Check) -> tuple[int, int]:
    from lightbagel.model import build_skeleton

    block = build_skeleton(check.cfg).fusion[0]
    attn = block.gen
    return attn.heads, attn.head_dim


def section_attention(check: Check) -> None:
    import attention_mask

    heads, head_dim = fusion_heads(check)
    length = 512 if check.dry else check.args.tokens
    what = "forward only, compiled flex left out" if check.dry else "forward + backward"
    print(f"(c) attention backends on the packed rule at the fused attention's {heads} heads x {head_dim}: {what}")
    argv = ["--length", str(length), "--heads", str(heads), "--head-dim", str(head_dim), "--device", check.device,
            "--repeats", "1" if check.dry else "3"]
    attention_mask.main(argv + (["--no-compile", "--eager-max", "0"] if check.dry else ["--backward"]))


def section_edit(check: Check) -> None:
    import inference_cache

    size = 32 if check.dry else check.args.edit_size
    print(f"(d) one {size} px edit, caches on against off")
    argv = ["--recipe", str(check.recipe_path), *check.overrides, "--device", check.device,
            "--dtype", "float32" if check.dry else "bfloat16", "--size", str(size),
            "--steps", "2" if check.dry else str(check.args.edit_steps), "--repeats", "1" if check.dry else "2"]
    inference_cache.main(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    check = Check(args)
    torch.manual_seed(0)
    name = "CPU (dry run, toy sizes)" if check.dry else torch.cuda.get_device_name()
    print(f"gpu_check on {name}, torch {torch.__version__}")
    start = time.perf_counter()
    for section in (section_training, section_attention, section_edit):
        section(check)
        print(f"    [{time.perf_counter() - start:.0f} s so far]", flush=True)


if __name__ == "__main__":
    main()
