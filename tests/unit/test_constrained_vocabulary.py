"""Byte views of tokenizers: GPT-2 byte-level BPE and SentencePiece with byte fallback."""

from __future__ import annotations

import os

import pytest

from radixlm.constrained.vocabulary import (
    BYTE_LEVEL,
    SENTENCEPIECE,
    TokenVocabulary,
    build_token_vocabulary,
    detect_kind,
    unicode_to_byte,
)
from radixlm.errors import ConfigError
from radixlm.tokenizer import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GPT2_DIR = os.path.join(ROOT, "tests", "fixtures", "gpt2")
STORIES_DIR = os.path.join(ROOT, "radixlm", "assets", "stories260K")
TEXTS = ["Hello world", 'x = {"a": [1, 2.5e-3]}\n\ttab', "naïve café 日本語 🙂", "  two  spaces"]


@pytest.fixture(scope="module")
def gpt2():
    return load_tokenizer(GPT2_DIR)


@pytest.fixture(scope="module")
def stories():
    return load_tokenizer(STORIES_DIR)


def test_unicode_to_byte_is_gpt2_table() -> None:
    table = unicode_to_byte()
    assert sorted(table.values()) == list(range(256))
    assert table["A"] == ord("A") and table["~"] == ord("~") and table["é"] == 0xE9
    assert table["Ġ"] == ord(" ")  # U+0120: the 33rd non-printable byte is the space
    assert table["Ċ"] == ord("\n")
    assert table["Ā"] == 0 and chr(0xAD) not in table


def test_gpt2_bytes_round_trip(gpt2) -> None:
    vocab = build_token_vocabulary(gpt2)
    assert vocab.kind == BYTE_LEVEL and detect_kind(gpt2) == BYTE_LEVEL
    assert vocab.size == len(gpt2) == 50257
    for text in TEXTS:
        ids = gpt2.encode(text, add_special_tokens=False)
        assert vocab.decode(ids) == text.encode()


def test_gpt2_special_eos_and_padding_ids_have_no_bytes(gpt2) -> None:
    vocab = build_token_vocabulary(gpt2, vocab_size=50304)
    assert vocab.eos_token_ids == (50256,)
    assert vocab.size == 50304
    assert vocab.token_bytes[50256] is None  # <|endoftext|>: special and EOS
    assert all(b is None for b in vocab.token_bytes[50257:])  # padding rows of the model
    assert sum(b is not None for b in vocab.token_bytes) == 50256
    assert vocab.token_bytes[gpt2.convert_tokens_to_ids("Ġworld")] == b" world"


def test_explicit_eos_ids_are_excluded(gpt2) -> None:
    vocab = build_token_vocabulary(gpt2, eos_token_ids=[13, 50256])  # "." as a second EOS
    assert vocab.eos_token_ids == (13, 50256)
    assert vocab.token_bytes[13] is None and b"." not in vocab.ids_by_bytes


def test_sentencepiece_byte_fallback(stories) -> None:
    vocab = build_token_vocabulary(stories)
    assert vocab.kind == SENTENCEPIECE
    assert vocab.eos_token_ids == (stories.eos_token_id,)
    assert all(vocab.token_bytes[i] is None for i in stories.all_special_ids)
    assert vocab.token_bytes[stories.convert_tokens_to_ids("<0xE6>")] == b"\xe6"
    assert vocab.token_bytes[stories.convert_tokens_to_ids("▁Once")] == b" Once"
    for text in TEXTS:
        ids = stories.encode(text, add_special_tokens=False)
        # NOTE: SentencePiece may prepend "▁" to the text; its decoder strips it again.
        assert vocab.decode(ids) in (text.encode(), b" " + text.encode())


def test_ids_by_bytes_groups_duplicates() -> None:
    vocab = TokenVocabulary([b"a", b"b", b"a", b"", None, b"c"], eos_token_ids=[5])
    assert vocab.ids_by_bytes == {b"a": [0, 2], b"b": [1]}
    assert vocab.token_bytes[3] is None  # empty tokens are never allowed
    assert vocab.decode([0, 1, 5]) == b"ab"


def test_no_eos_is_an_error() -> None:
    with pytest.raises(ConfigError, match="EOS"):
        TokenVocabulary([b"a"], eos_token_ids=[])


class _WordTokenizer:
    """A tokenizer of neither kind: whole words, no decoder."""

    eos_token_id = 0
    all_special_ids = [0]

    def get_vocab(self) -> dict[str, int]:
        return {"</s>": 0, "hello": 1, "world": 2}

    def __len__(self) -> int:
        return 3


def test_unknown_tokenizer_kind_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="--grammar-backend none"):
        build_token_vocabulary(_WordTokenizer())


def test_kind_from_vocabulary_when_decoder_is_unknown() -> None:
    class ByteFallbackOnly(_WordTokenizer):
        def get_vocab(self) -> dict[str, int]:
            return {f"<0x{b:02X}>": b + 1 for b in range(256)} | {"</s>": 0, "▁hi": 257}

        def __len__(self) -> int:
            return 258

    tok = ByteFallbackOnly()
    assert detect_kind(tok) == SENTENCEPIECE
    vocab = build_token_vocabulary(tok)
    assert vocab.token_bytes[257] == b" hi" and vocab.token_bytes[0x42 + 1] == b"B"
