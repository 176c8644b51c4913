"""Resolution bucketing: every image keeps its native aspect ratio within the card's short/long
side limits, rounded to the model's multiple. A padded batch holds one image size and fills up to
a token budget, so small images come in big batches and large ones in small batches; a packed row
(data.packing.layout packed) holds images of every size, so it fills to its budget whatever the
mix of sizes (docs/data.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from PIL import Image

from lightbagel.data.images import to_rgb
from lightbagel.recipe.schema import ResolutionConfig

Size = tuple[int, int]  # (width, height), PIL's order


def fit_size(width: int, height: int, min_short: int, max_long: int, multiple: int) -> Size:
    """Scale up to ``min_short`` on the short side, then down to ``max_long`` on the long side
    (the long limit wins for extreme aspect ratios); round each side down to ``multiple``."""
    short, long = min(width, height), max(width, height)
    scale = max(1.0, min_short / short)
    scale = min(scale, max_long / long) if long * scale > max_long else scale
    # round() first: 32 * (512 / 32) must not floor to 511.99 -> 480.
    return tuple(max(multiple, int(round(side * scale, 6)) // multiple * multiple)  # type: ignore[return-value]
                 for side in (width, height))


@dataclass(frozen=True)
class ResolutionPolicy:
    cfg: ResolutionConfig
    vae_multiple: int

    def vae_size(self, size: Size) -> Size:
        return fit_size(*size, self.cfg.vae_min_short, self.cfg.vae_max_long, self.vae_multiple)

    def vit_size(self, size: Size) -> Size:
        return fit_size(*size, self.cfg.vit_min_short, self.cfg.vit_max_long, self.cfg.vit_multiple)

    def source_pixels(self, image: Image.Image, vae_size: Optional[Size] = None) -> tuple[Image.Image, Image.Image]:
        """An edit source's ViT copy (its own aspect, ViT limits) and VAE copy (`vae_size`, by
        default the source's own bucket): the one place training and inference size sources."""
        image = to_rgb(image)
        return self.vit_pixels(image), resized(image, vae_size or self.vae_size(image.size))

    def vit_pixels(self, image: Image.Image) -> Image.Image:
        """An image's ViT copy alone (a chat image: no VAE copy is made)."""
        image = to_rgb(image)  # a 16-bit or transparent image shows the pixels it holds (data/images.py)
        return resized(image, self.vit_size(image.size))

    def tokens(self, target: Size, vit: Optional[Size], text: str) -> int:
        """Tokens a sample feeds the fused model: VAE tokens of the target (and of the source,
        whose ViT tokens count too) plus text, estimated by words."""
        gen = (target[0] // self.vae_multiple) * (target[1] // self.vae_multiple)
        n = gen + len(text.split()) + 1
        if vit is not None:
            n += gen + (vit[0] // self.cfg.vit_multiple) * (vit[1] // self.cfg.vit_multiple) + 2
        return n

    def chat_tokens(self, vit: list[Size], conversation: list[dict]) -> int:
        """Tokens of an und sample: its ViT images and every turn's words (the VLM alone runs)."""
        words = sum(len(str(turn["content"]).split()) + 3 for turn in conversation)
        return words + sum((w // self.cfg.vit_multiple) * (h // self.cfg.vit_multiple) + 2 for w, h in vit)


def resized(image: Image.Image, size: Size) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.BICUBIC)


MIXED = ("mixed",)  # the one buffer of every image size, with `Bucketer.mix_sizes`


@dataclass
class Pending:
    draw: int
    tokens: int
    sample: dict


@dataclass
class Bucketer:
    """Buffers of prepared samples; `add` returns a batch once a buffer is full.

    Without a token budget a buffer is sent at exactly ``max_batch`` samples. With one, a buffer
    is sent once it holds ``token_budget`` tokens or ``max_batch`` samples, or when the next sample
    would take it past ``max_tokens`` (that sample starts the next buffer): BAGEL's packer
    (ByteDance-Seed/Bagel, data/dataset_base.py: ``expected_num_tokens`` and ``max_num_tokens``).
    ``max_tokens`` None makes the budget the cap. One buffer per image size, or with
    ``mix_sizes`` one for every image size (und samples keep theirs: a batch is one task kind).
    Buffers only grow until sent, so the samples waiting are the whole state (exact resume).
    """

    max_batch: int
    token_budget: Optional[int] = None
    max_tokens: Optional[int] = None
    mix_sizes: bool = False
    buckets: dict[tuple, list[Pending]] = field(default_factory=dict)

    def add(self, size: tuple, item: Pending) -> list[Pending] | None:
        key = MIXED if self.mix_sizes and size[0] != "und" else size
        bucket = self.buckets.setdefault(key, [])
        cap = self.max_tokens or self.token_budget
        if cap is not None and bucket and sum(p.tokens for p in bucket) + item.tokens > cap:
            self.buckets[key] = [item]
            return bucket
        bucket.append(item)
        full = self.token_budget is not None and sum(p.tokens for p in bucket) >= self.token_budget
        if full or len(bucket) >= self.max_batch:
            return self.buckets.pop(key)
        return None

    def oldest(self) -> Pending | None:
        waiting = [b[0] for b in self.buckets.values() if b]
        return min(waiting, key=lambda p: p.draw) if waiting else None

    def pop_oldest(self) -> list[Pending]:
        oldest = self.oldest()
        size = next(s for s, b in self.buckets.items() if b and b[0] is oldest)
        return self.buckets.pop(size)

    def pending(self) -> list[int]:
        return sorted(p.draw for b in self.buckets.values() for p in b)

    def clear(self) -> list[Pending]:
        dropped = [p for b in self.buckets.values() for p in b]
        self.buckets.clear()
        return dropped
