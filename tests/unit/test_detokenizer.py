"""IncrementalDetokenizer with the bundled SentencePiece tokenizer (byte fallback).

The reference for a stream of output ids is ``decode(prompt + output)`` with the text of
``decode(prompt)`` cut off its front: SentencePiece drops the leading space of the first word
of a decode, so the prompt provides the context that keeps the output's first space.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radixlm.config import BUNDLED_MODEL
from radixlm.tokenizer.detokenizer import CONTEXT_TOKENS, IncrementalDetokenizer

FFFD = "\ufffd"


@pytest.fixture(scope="module")
def tok() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(BUNDLED_MODEL)


def stream(tok: Any, prompt_ids: list[int], output_ids: list[int]) -> list[str]:
    """Feed ``output_ids`` one at a time; return every chunk, the flush last."""
    d = IncrementalDetokenizer(tok, prompt_ids)
    chunks = [d.add([i]) for i in output_ids]
    chunks.append(d.flush())
    assert d.text == "".join(chunks)
    assert d.flush() == ""
    return chunks


def expected(tok: Any, prompt_ids: list[int], output_ids: list[int]) -> str:
    """``decode(prompt + output)`` minus ``decode(prompt)`` (which must be a prefix of it)."""
    full = tok.decode(prompt_ids + output_ids, skip_special_tokens=True)
    head = tok.decode(prompt_ids, skip_special_tokens=True)
    assert full.startswith(head), (full, head)
    return full[len(head) :]


def ids(tok: Any, text: str, bos: bool) -> list[int]:
    return tok.encode(text, add_special_tokens=bos)


def byte_ids(tok: Any, data: bytes) -> list[int]:
    return tok.convert_tokens_to_ids([f"<0x{b:02X}>" for b in data])


def test_tokenizer_has_byte_fallback(tok: Any) -> None:
    # The multi-byte tests below rely on these characters being spelled as byte tokens.
    out = ids(tok, " 你🙂", bos=False)
    assert tok.convert_ids_to_tokens(out)[1:] == [f"<0x{b:02X}>" for b in "你🙂".encode()]


def test_keeps_leading_space_of_first_output_word(tok: Any) -> None:
    prompt, output = ids(tok, "Once upon a time", True), ids(tok, " there was", False)
    chunks = stream(tok, prompt, output)
    assert chunks == [" there", " was", ""]
    assert expected(tok, prompt, output) == " there was"


def test_bos_only_prompt_has_no_leading_space(tok: Any) -> None:
    prompt, output = ids(tok, "", True), ids(tok, "Hello world", False)
    assert "".join(stream(tok, prompt, output)) == expected(tok, prompt, output) == "Hello world"


def test_long_prompt_uses_only_its_tail_as_context(tok: Any) -> None:
    prompt = ids(tok, "Lily saw a big red ball in the park and she was happy", True)
    assert len(prompt) > CONTEXT_TOKENS
    output = ids(tok, " She ran to it.", False)
    assert "".join(stream(tok, prompt, output)) == " She ran to it."


def test_multibyte_characters_arrive_whole(tok: Any) -> None:
    prompt, output = ids(tok, "héllo", True), ids(tok, " 你好 🙂 é", False)
    chunks = stream(tok, prompt, output)
    assert "".join(chunks) == expected(tok, prompt, output) == " 你好 🙂 é"
    assert not any(FFFD in c for c in chunks)
    for ch in ("你", "好", "🙂"):
        assert ch in chunks  # emitted as one chunk once its last byte arrives


def test_several_ids_per_add(tok: Any) -> None:
    prompt, output = ids(tok, "Once", True), ids(tok, " upon 🙂 a time", False)
    d = IncrementalDetokenizer(tok, prompt)
    text = "".join(d.add(output[i : i + 3]) for i in range(0, len(output), 3)) + d.flush()
    assert text == " upon 🙂 a time"


def test_special_tokens_skipped(tok: Any) -> None:
    prompt, output = ids(tok, "Once", True), ids(tok, " upon", False) + [tok.eos_token_id]
    assert "".join(stream(tok, prompt, output)) == " upon"


def test_flush_emits_incomplete_bytes(tok: Any) -> None:
    prompt = ids(tok, "Once", True)
    output = ids(tok, " a", False) + byte_ids(tok, "你".encode()[:2])
    d = IncrementalDetokenizer(tok, prompt)
    assert [d.add([i]) for i in output] == [" a", "", ""]
    tail = d.flush()
    assert tail and set(tail) == {FFFD}
    assert " a" + tail == expected(tok, prompt, output)
    assert d.flush() == ""


def test_output_continuing_a_byte_run_of_the_prompt_context(tok: Any) -> None:
    # The prompt ends in two byte-fallback characters (6 byte tokens), so its last
    # CONTEXT_TOKENS ids start in the middle of "你"; the output continues the byte run.
    prompt = ids(tok, "你好", True)
    output = byte_ids(tok, "你".encode()) + ids(tok, " x", False)
    assert expected(tok, prompt, output) == "你 x"
    chunks = stream(tok, prompt, output)
    assert "".join(chunks) == "你 x"
    assert not any(FFFD in c for c in chunks)


TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("abc xyz .,\nOnce")),
        st.characters(exclude_categories=("Cs",), max_codepoint=0x1FFFF),
    ),
    max_size=16,
)


@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(prompt_text=TEXT, output_text=TEXT.filter(bool))
def test_stream_equals_decode_difference(tok: Any, prompt_text: str, output_text: str) -> None:
    prompt, output = ids(tok, prompt_text, True), ids(tok, output_text, False)
    chunks = stream(tok, prompt, output)
    want = expected(tok, prompt, output)
    assert "".join(chunks) == want
    if FFFD not in want:
        assert not any(FFFD in c for c in chunks)
