"""Logprob token strings are each token's own text, spaces included (issue 17, item 7):
appended one by one they give the decoded text, for SentencePiece (the bundled stories260K,
whose decoder strips a leading space) and byte-level BPE (GPT-2)."""

from __future__ import annotations

import os

import pytest

from radixlm.config import BUNDLED_MODEL
from radixlm.tokenizer import load_tokenizer
from radixlm.tokenizer.token_text import TokenText

GPT2 = os.path.join(os.path.dirname(__file__), "..", "fixtures", "gpt2")
TEXT = 'Once upon a time, there was a little girl named Lily. She said: "Hi!"\n  Two  spaces'


@pytest.mark.parametrize("path", [BUNDLED_MODEL, GPT2], ids=["sentencepiece", "byte-level"])
def test_token_strings_join_to_the_text(path):
    tok = load_tokenizer(path)
    text_of = TokenText(tok)
    ids = tok.encode(TEXT, add_special_tokens=False)
    for i in range(1, len(ids)):
        before = tok.decode(ids[:i], skip_special_tokens=False)
        after = tok.decode(ids[: i + 1], skip_special_tokens=False)
        assert after == before + text_of(ids[i]), (i, tok.convert_ids_to_tokens(ids[i]))
    spaced = [text_of(t) for t in ids if tok.convert_ids_to_tokens(t).startswith(("▁", "Ġ"))]
    assert spaced and all(s.startswith(" ") for s in spaced)
