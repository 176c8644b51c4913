import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lightbagel.shapes import vocabulary
from lightbagel.shapes.tokenizer import SPECIAL_TOKENS, UNK_TOKEN, build_shapes_tokenizer

CHAT = (
    "<|im_start|>user\nA red circle left of a blue square.<|im_end|>\n"
    "<|im_start|>assistant\n<|vision_start|><|image_pad|><|image_pad|><|vision_end|><|endoftext|>"
)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_shapes_tokenizer()


def test_special_tokens(tokenizer):
    assert SPECIAL_TOKENS == (
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    )
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert set(SPECIAL_TOKENS) <= set(tokenizer.all_special_tokens)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS) and tokenizer.unk_token_id not in ids
    for token, token_id in zip(SPECIAL_TOKENS, ids):  # never split or lowercased
        assert tokenizer(token, add_special_tokens=False).input_ids == [token_id]


def test_vocabulary_words_are_single_known_tokens(tokenizer):
    assert len(tokenizer) < 128
    unk = tokenizer.unk_token_id
    assert tokenizer.unk_token == UNK_TOKEN
    for word in vocabulary():
        ids = tokenizer(word, add_special_tokens=False).input_ids
        assert len(ids) == 1 and ids[0] != unk, word
    assert tokenizer("zebra", add_special_tokens=False).input_ids == [unk]
    upper = tokenizer("A RED Circle", add_special_tokens=False).input_ids
    assert upper == tokenizer("a red circle", add_special_tokens=False).input_ids


def test_chat_text_encodes_without_unknowns(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(CHAT).input_ids)
    assert UNK_TOKEN not in tokens
    assert tokens[:3] == ["<|im_start|>", "user", "a"]
    assert tokens.count("<|image_pad|>") == 2 and "." in tokens
    text = tokenizer.decode(tokenizer(CHAT).input_ids, skip_special_tokens=True)
    assert text == "user a red circle left of a blue square. assistant"


def test_padding_uses_endoftext(tokenizer):
    batch = tokenizer(["a red circle", "two blue squares left"], padding=True)
    assert batch.input_ids[0][-1] == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert batch.attention_mask[0] == [1, 1, 1, 0]


@pytest.mark.parametrize("loader", [PreTrainedTokenizerFast, AutoTokenizer])
def test_save_and_load_round_trip(tokenizer, tmp_path, loader):
    tokenizer.save_pretrained(tmp_path)
    loaded = loader.from_pretrained(tmp_path)
    assert loaded(CHAT).input_ids == tokenizer(CHAT).input_ids
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded.pad_token == loaded.eos_token == "<|endoftext|>"
    assert loaded.unk_token == UNK_TOKEN
    assert set(SPECIAL_TOKENS) <= set(loaded.all_special_tokens)
