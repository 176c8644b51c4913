"""What the fused model needs from a vision-language model (the understanding pathway)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import torch
from PIL import Image
from torch import nn

from lightbagel.inputs import PAD, UndInputs

Segment = Union[str, Image.Image]


@dataclass
class EncodedPrompt:
    """One sample's understanding tokens before batching."""

    input_ids: list[int]
    mm_token_type_ids: list[int]
    segment: list[int]
    order: list[int]
    pixel_values: list[torch.Tensor] = field(default_factory=list)
    image_grid_thw: list[torch.Tensor] = field(default_factory=list)
    # Logical order of each image's clean VAE split, next to its ViT split; which comes first is
    # the recipe's `fusion.edit_layout` (docs/full_size.md). BAGEL puts the VAE split first.
    vae_orders: list[int] = field(default_factory=list)
    next_order: int = 0


# fusion.edit_layout -> (ViT split, VAE split) order offsets of an image; BAGEL puts the VAE first.
EDIT_LAYOUTS = {"vae_first": (1, 0), "vit_first": (0, 1)}


class UndProcessor:
    """CPU-side, picklable half of an adapter: turns text and images into token lists.

    Runs in DataLoader workers, so it holds no model weights.
    """

    pad_token_id: int
    tokenizer: Any
    # What the chat template writes for one image, and the turn delimiters (Qwen's by default).
    image_placeholder: str = "<|vision_start|><|image_pad|><|vision_end|>"
    turn_start, turn_end = "<|im_start|>", "<|im_end|>"
    # "vae_first" (BAGEL's order) or "vit_first": set from the recipe's `fusion.edit_layout`.
    edit_layout: str = "vae_first"
    # The most tokens one text may hold: the VLM's position limit, or the tokenizer's if lower
    # (set by the adapter); None: unbounded.
    max_tokens: Optional[int] = None

    def too_long(self, text: str, limit: Optional[int] = None) -> bool:
        """Whether `text` has more tokens than `limit` (and than `max_tokens`). Cheap for short
        texts: no tokenizer yields more tokens than UTF-8 bytes; a long one is counted with
        truncation on, so the tokenizer neither warns nor keeps more than limit + 1 ids."""
        limit = min(x for x in (limit, self.max_tokens, 1 << 62) if x is not None)
        if len(text.encode()) <= limit:
            return False
        ids = self.tokenizer(text, add_special_tokens=False, truncation=True, max_length=limit + 1)["input_ids"]
        return len(ids) > limit

    def check_text(self, text: str, what: str) -> None:
        """A prompt or question the model cannot read whole is refused in one line."""
        if self.too_long(text):
            raise ValueError(f"{what} is longer than the {self.max_tokens} tokens this model reads "
                             f"({len(text)} characters); shorten it")

    def image_orders(self, out: EncodedPrompt) -> tuple[int, int]:
        """(ViT split order, VAE split order) of the next image; reserves both orders."""
        o = out.next_order
        out.next_order = o + 2
        vit, vae = EDIT_LAYOUTS[self.edit_layout]
        return o + vit, o + vae

    def encode(self, segments: Sequence[Segment]) -> EncodedPrompt:
        raise NotImplementedError

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def prompt(self, text: str, images: Sequence[Image.Image] = ()) -> EncodedPrompt:
        """Generation conditioning, in training and sampling alike: the source images, then the text.

        With a chat template the text is wrapped as BAGEL wraps every text it conditions on,
        `<|im_start|>text<|im_end|>` (`prepare_prompts` in BAGEL's modeling/bagel/bagel.py,
        https://github.com/ByteDance-Seed/Bagel).
        """
        if self.has_chat_template:
            text = f"{self.turn_start}{text}{self.turn_end}"
        return self.encode([*images, text])

    def chat(self, question: str, images: Sequence[Image.Image] = ()) -> EncodedPrompt:
        """A user turn (images, then the question) and the assistant's opening, rendered by the
        tokenizer's chat template; the bare question without one."""
        if not self.has_chat_template:
            return self.encode([*images, question])
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
        rendered = self.tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                      add_generation_prompt=True, tokenize=False)
        texts = rendered.split(self.image_placeholder)
        if len(texts) != len(images) + 1:
            raise ValueError(f"the tokenizer's chat template wrote {len(texts) - 1} image placeholders "
                             f"({self.image_placeholder}) for {len(images)} images")
        return self.encode([texts[0], *(seg for pair in zip(images, texts[1:]) for seg in pair)])

    @functools.cached_property
    def system_turn(self) -> str | None:
        """The system turn the tokenizer's chat template opens a conversation with when it brings
        none (Qwen2-VL / Qwen2.5-VL-Instruct: "You are a helpful assistant."), so training prompts
        (data/chat.py) start as `chat` prompts do; None without a template or such a turn."""
        if not self.has_chat_template:
            return None
        rendered = self.tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "x"}]}],
                                                      tokenize=False)
        opening = f"{self.turn_start}system\n"
        if not rendered.startswith(opening) or self.turn_end not in rendered:
            return None
        return rendered[:rendered.index(self.turn_end) + len(self.turn_end)] + "\n"

    @property
    def stop_token_ids(self) -> list[int]:
        """Where an answer ends: end of text, and end of turn under a chat template."""
        stops = [self.tokenizer.eos_token_id]
        if self.has_chat_template:
            stops.append(self.tokenizer.convert_tokens_to_ids(self.turn_end))
        return [t for t in dict.fromkeys(stops) if t is not None]

    def collate(self, prompts: Sequence[EncodedPrompt]) -> UndInputs:
        """Right-pads a batch of prompts into one `UndInputs`."""
        length = max(len(p.input_ids) for p in prompts)
        def pad(values: list[int], fill: int) -> list[int]:
            return values + [fill] * (length - len(values))
        ids = torch.tensor([pad(p.input_ids, self.pad_token_id) for p in prompts])
        mask = torch.tensor([pad([1] * len(p.input_ids), 0) for p in prompts])
        pixels = [x for p in prompts for x in p.pixel_values]
        grids = [g for p in prompts for g in p.image_grid_thw]
        return UndInputs(
            input_ids=ids,
            attention_mask=mask,
            mm_token_type_ids=torch.tensor([pad(p.mm_token_type_ids, 0) for p in prompts]),
            segment=torch.tensor([pad(p.segment, PAD) for p in prompts]),
            order=torch.tensor([pad(p.order, 0) for p in prompts]),
            pixel_values=torch.cat(pixels) if pixels else None,
            image_grid_thw=torch.stack(grids) if grids else None,
        )


class UnderstandingAdapter(nn.Module):
    """A VLM seen block by block.

    Subclasses set `num_layers`, `hidden_size`, `num_heads`, `head_dim` and `processor`, and
    declare the facts precision.py and training/sharding.py read: `keep_in_fp32`, `blocks` and
    `block_called`.
    """

    num_layers: int
    hidden_size: int
    num_heads: int
    head_dim: int
    processor: UndProcessor
    keep_in_fp32: tuple[str, ...]  # name patterns (re.search) inside the adapter kept in fp32; () for none
    blocks: str  # dotted path from the adapter to its decoder layers, one FSDP2 unit per layer
    block_called: bool  # whether `block(i)` calls `blocks[i](...)` (see GenerationAdapter)

    def embed(self, und: UndInputs) -> tuple[torch.Tensor, object]:
        """Token + ViT embeddings (B, L, D) and the rotary embedding of their positions."""
        raise NotImplementedError

    def block(self, index: int, hidden: torch.Tensor, mask: torch.Tensor, rope) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def rotate(self, x: torch.Tensor, rope) -> torch.Tensor:
        """Applies this model's rotary embedding to (B, L, H, head_dim) queries or keys."""
        raise NotImplementedError

    def gather_rope(self, rope, rows: torch.Tensor, cols: torch.Tensor):
        """The rotary embedding of tokens (rows[i], cols[i]) as one packed row (src/lightbagel/packing.py).

        Here `embed`'s rope is a tuple of (B, L, ...) tables (Qwen's cos and sin, M-RoPE sections
        already merged); an adapter with another structure overrides this.
        """
        return tuple(r[rows, cols].unsqueeze(0) for r in rope)
