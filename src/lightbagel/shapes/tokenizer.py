"""A tiny word-level tokenizer for the shapes world, built locally (no downloads).

It knows every word of :func:`lightbagel.shapes.vocabulary`, the words of a
Qwen-style chat template, digits and a little punctuation, plus the Qwen2-VL
special tokens that the unified model uses to frame chat turns and images.
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lightbagel.shapes import vocabulary

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
UNK_TOKEN = "[UNK]"
# Role names appear in chat-formatted prompts ("<|im_start|>user ...").
CHAT_WORDS: tuple[str, ...] = ("system", "user", "assistant")
PUNCTUATION: tuple[str, ...] = tuple(".,?!:;'\"-()")


def _base_words() -> list[str]:
    words = [*vocabulary(), *CHAT_WORDS, *string.digits, *PUNCTUATION]
    return list(dict.fromkeys(words))  # unique, order kept so ids are stable


def _build_backend() -> Tokenizer:
    tokens = [UNK_TOKEN, *_base_words(), *SPECIAL_TOKENS]
    vocab = {token: index for index, token in enumerate(tokens)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    # WordLevel has no merge information, so words are joined back with spaces.
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    # Registered as special so that they are matched before normalisation and
    # pre-tokenisation (which would lowercase and split them) and can be skipped.
    backend.add_special_tokens([UNK_TOKEN, *SPECIAL_TOKENS])
    return backend


# Qwen2.5-VL-Instruct's chat format without its default system turn: a role per turn between
# <|im_start|> and <|im_end|>, an image as <|vision_start|><|image_pad|><|vision_end|>, so the
# chat path of the real VLM is exercised on CPU.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_shapes_tokenizer() -> PreTrainedTokenizerFast:
    """The shapes-world tokenizer; ``<|endoftext|>`` doubles as pad and eos token."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_build_backend(),
        unk_token=UNK_TOKEN,
        pad_token=SPECIAL_TOKENS[0],
        eos_token=SPECIAL_TOKENS[0],
        extra_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=512,
        padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
