"""`und` samples (images + a chat) -> VLM inputs with the answer tokens marked.

The chat layout is Qwen's, the one `LightBagelPipeline.answer_tokens` prompts with, so a VLM
trained on these batches answers the pipeline's questions. Only assistant turns (and the
`<|im_end|>` that closes each, so the model learns to stop) carry the understanding loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from PIL import Image

from lightbagel.backbones.understanding.base import EncodedPrompt, Segment, UndProcessor
from lightbagel.inputs import VIT, UndInputs

IMAGE = "<image>"  # where the next image goes in a user turn (docs/data.md)


@dataclass
class ChatBatch:
    und: UndInputs
    answer_mask: torch.Tensor  # (B, L) True on the tokens the VLM must predict
    texts: list[str]
    data_state: Optional[dict] = None  # as TrainBatch.data_state

    def __len__(self) -> int:
        return self.answer_mask.shape[0]


def _user_pieces(role: str, content: str, images: list[Image.Image], key: str, turn: tuple[str, str]
                 ) -> list[tuple[Segment, bool]]:
    pieces: list[tuple[Segment, bool]] = [(f"{turn[0]}{role}\n", False)]
    for k, text in enumerate(content.split(IMAGE)):
        if k:
            if not images:
                raise ValueError(f"{key}: conversation has more {IMAGE} marks than images")
            pieces.append((images.pop(0), False))
        if text:
            pieces.append((text, False))
    return pieces + [(f"{turn[1]}\n", False)]


def chat_pieces(conversation: Sequence[dict], images: Sequence[Image.Image], key: str = "sample",
                delimiters: tuple[str, str] = (UndProcessor.turn_start, UndProcessor.turn_end),
                system: str | None = None) -> list[tuple[Segment, bool]]:
    """The chat as (segment, is_answer) pieces; images without a mark go before the first turn's text.
    `delimiters`: the processor's turn start and end, the ones its prompts and stop tokens use;
    `system`: the rendered system turn written first when the conversation opens without one, as the
    processor's chat template does (`UndProcessor.system_turn`)."""
    queue = list(images)
    marks = sum(str(t["content"]).count(IMAGE) for t in conversation)
    lead = [(queue.pop(0), False) for _ in range(max(0, len(queue) - marks))]
    pieces: list[tuple[Segment, bool]] = []
    for turn in conversation:
        role, content = str(turn["role"]), str(turn["content"])
        if role == "assistant":
            start, end = delimiters
            pieces += [(f"{start}assistant\n", False), (content, True), (end, True), ("\n", False)]
        else:
            pieces += _user_pieces(role, content, queue, key, delimiters)
    opening = [] if system is None or (conversation and conversation[0].get("role") == "system") else \
        [(system, False)]
    return opening + pieces[:1] + lead + pieces[1:]


def encode_chat(processor: UndProcessor, conversation: Sequence[dict], images: Sequence[Image.Image],
                key: str = "sample") -> tuple[EncodedPrompt, list[bool]]:
    """The prompt and, per token, whether it belongs to an answer.

    The processor tokenises each segment on its own, so a text piece's tokens are exactly those of
    the piece encoded alone. An image piece is its split's run of one order in the prompt: counted
    there, not by running the image processor a second time.
    """
    pieces = chat_pieces(conversation, images, key, (processor.turn_start, processor.turn_end),
                         processor.system_turn)
    prompt = processor.encode([seg for seg, _ in pieces])
    mask: list[bool] = []
    for seg, is_answer in pieces:
        n = len(processor.encode([seg]).input_ids) if isinstance(seg, str) else _split_length(prompt, len(mask))
        mask += [is_answer] * n
    if len(mask) != len(prompt.input_ids):
        raise ValueError(f"{key}: the processor does not tokenise segments independently; cannot mark answers")
    return prompt, mask


def _split_length(prompt: EncodedPrompt, start: int) -> int:
    """Tokens of the image split starting at `start`: one order for the whole split."""
    end = start
    while end < len(prompt.order) and prompt.order[end] == prompt.order[start] and prompt.segment[end] == VIT:
        end += 1
    return end - start


def collate_chat(processor: UndProcessor, samples: Sequence[dict]) -> ChatBatch:
    """Samples with `conversation` and `images` (ViT-sized PIL images) -> one right-padded batch."""
    encoded = [encode_chat(processor, s["conversation"], s["images"], s.get("key", "sample")) for s in samples]
    und = processor.collate([prompt for prompt, _ in encoded])
    length = und.input_ids.shape[1]
    mask = torch.tensor([m + [False] * (length - len(m)) for _, m in encoded], dtype=torch.bool)
    return ChatBatch(und, mask, [s["text"] for s in samples])
