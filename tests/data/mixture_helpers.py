"""Helpers for the mixture pipeline tests: small hand-made webdataset sources and a plan."""

from __future__ import annotations

import io
from pathlib import Path

import webdataset as wds
from PIL import Image

from lightbagel.data.buckets import ResolutionPolicy
from lightbagel.data.collate import Collator
from lightbagel.data.mixture import Schedule
from lightbagel.data.pipeline import MixturePlan, SourceSpec
from lightbagel.recipe.schema import ResolutionConfig, SourceConfig, StageConfig

COLORS = [(200, 30, 30), (30, 160, 60), (30, 70, 210), (240, 210, 0)]


def png(size: tuple[int, int], color=(128, 128, 128)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_source(out: Path, name: str, n: int, per_shard: int = 10, size=(16, 16), edit_every: int = 0) -> list[str]:
    """``n`` samples in shards of ``per_shard``: t2i, or edit for every ``edit_every``-th."""
    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / f"{name}-%04d.tar"), maxcount=per_shard, verbose=0, mtime=0) as writer:
        for i in range(n):
            sample = {"__key__": f"{name}{i:05d}", "target.png": png(size, COLORS[i % 4])}
            if edit_every and i % edit_every == 0:
                sample.update({"task.txt": "edit", "source.png": png(size), "instruction.txt": "make the circle red"})
            else:
                sample["caption.txt"] = "a red circle"
            writer.write(sample)
    return sorted(str(p) for p in out.glob(f"{name}-*.tar"))


class WordTokenizer:
    """One id per word, as a transformers tokenizer is called (truncation to `max_length`)."""

    def __call__(self, text: str, add_special_tokens: bool = False, truncation: bool = False,
                 max_length: int | None = None) -> dict:
        ids = [1] * len(text.split())
        return {"input_ids": ids[:max_length] if truncation and max_length else ids}


class WordProcessor:
    """A picklable stand-in for the VLM processor: one token per word, one per 8x8 ViT patch."""

    pad_token_id = 0
    turn_start, turn_end = "<|im_start|>", "<|im_end|>"
    tokenizer = WordTokenizer()
    max_tokens: int | None = None
    system_turn = None  # no chat template, so no system turn (UndProcessor.system_turn)

    def too_long(self, text, limit=None):
        from lightbagel.backbones.understanding.base import UndProcessor

        return UndProcessor.too_long(self, text, limit)

    def encode(self, segments):
        from lightbagel.backbones.understanding.base import EncodedPrompt
        from lightbagel.inputs import TEXT, VIT

        out = EncodedPrompt([], [], [], [])
        for seg in segments:
            if isinstance(seg, str):
                n, label = len(seg.split()), TEXT
            else:
                n, label = (seg.size[0] // 8) * (seg.size[1] // 8), VIT
                out.vae_orders.append(out.next_order + n)
            out.input_ids += [1] * n
            out.mm_token_type_ids += [0] * n
            out.segment += [label] * n
            out.order += list(range(out.next_order, out.next_order + n))
            out.next_order += n + 1
        return out

    def prompt(self, text, images=()):
        return self.encode([*images, text])

    def collate(self, prompts):
        from lightbagel.backbones.understanding.base import UndProcessor

        return UndProcessor.collate(self, prompts)


def make_plan(sources: dict[str, tuple[list[str], float]], *, stages=(), batch_size=8, token_budget=None,
              block_size=16, max_wait=64, resolution: ResolutionConfig | None = None, **kw) -> MixturePlan:
    configs = [SourceConfig(name=n, urls=urls, weight=w) for n, (urls, w) in sources.items()]
    stage_cfgs = [StageConfig(start_step=s, weights=w) for s, w in stages]
    res = resolution or ResolutionConfig(vae_min_short=16, vae_max_long=32, vit_min_short=16, vit_max_long=16,
                                         vit_multiple=8)
    return MixturePlan(
        sources=[SourceSpec(c.name, tuple(c.urls), c.task) for c in configs],
        schedule=Schedule.build(configs, stage_cfgs), policy=ResolutionPolicy(res, 8),
        collator=Collator(WordProcessor(), 16), batch_size=batch_size, token_budget=token_budget,
        max_wait=max_wait, block_size=block_size, **kw,
    )
