"""The understanding objective's chat layout is what the VLM's own chat template writes."""

from __future__ import annotations

import copy

import pytest

from lightbagel.data.chat import chat_pieces

# Qwen2.5-VL-Instruct's chat template, re-typed to its text parts (chat_template.json): a system turn
# when the conversation opens without one, then each turn between <|im_start|> and <|im_end|>.
QWEN_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nYou are a "
    "helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}"
    "{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONVERSATION = [{"role": "user", "content": "What colour is the circle?"}, {"role": "assistant", "content": "red"}]


@pytest.fixture
def processor(tiny_recipe):
    from lightbagel.model import build_model

    proc = copy.deepcopy(build_model(tiny_recipe.config).und.processor)
    proc.tokenizer.chat_template = QWEN_TEMPLATE
    return proc


@pytest.mark.parametrize("conversation", [CONVERSATION, [{"role": "system", "content": "Be brief."}, *CONVERSATION]])
def test_training_chat_text_is_the_templates(processor, conversation):
    pieces = chat_pieces(conversation, [], delimiters=(processor.turn_start, processor.turn_end),
                         system=processor.system_turn)
    rendered = processor.tokenizer.apply_chat_template(conversation, tokenize=False)
    assert "".join(seg for seg, _ in pieces) == rendered
    assert "".join(seg for seg, answer in pieces if answer) == "red<|im_end|>"


def test_no_system_turn_without_a_template_that_writes_one(processor):
    processor.tokenizer.chat_template = QWEN_TEMPLATE.replace("loop.first and", "false and")
    assert processor.system_turn is None
