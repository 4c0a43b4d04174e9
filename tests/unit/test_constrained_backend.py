"""OutlinesBackend only: exact masks on a hand-made vocabulary, its mask cache and size guards,
random walks on real tokenizers. What every backend must do alike (masks, EOS, rollback, errors,
walks of every kind) is in test_constrained_backends_common.py, run once per backend."""

from __future__ import annotations

import json
import re

import pytest

from radixlm.constrained.base import GrammarSpec
from radixlm.constrained.outlines_backend import OutlinesBackend
from radixlm.constrained.vocabulary import TokenVocabulary
from radixlm.errors import ConfigError, GrammarError
from radixlm.tokenizer import load_tokenizer
from tests.unit.constrained_helpers import (
    AB,
    ABC,
    CHOICES,
    D0,
    D1,
    D2,
    DOT,
    EOS,
    EOS2,
    EOS_IDS,
    GPT2_DIR,
    HAND_VOCAB_SIZE,
    ONE_DOT,
    STORIES_DIR,
    TOKENS,
    A,
    B,
    C,
    allowed,
    regex,
    walk,
)


@pytest.fixture(scope="module")
def hand() -> OutlinesBackend:
    vocab = TokenVocabulary(TOKENS, eos_token_ids=[EOS, EOS2])
    return OutlinesBackend.from_vocabulary(vocab, vocab_size=HAND_VOCAB_SIZE)


# --- exact masks on the hand-made vocabulary -------------------------------------------------


def test_masks_per_state_for_repeated_group(hand) -> None:
    # (ab)+ is the case outlines-core 0.2.14 gets wrong without the sentinel workaround.
    m = hand.compile(regex("(ab)+c?")).matcher()
    assert allowed(m, hand) == {A, AB, ABC} and not m.is_final()
    assert m.advance(A) and allowed(m, hand) == {B}
    assert m.advance(B) and allowed(m, hand) == {A, AB, ABC, C} | EOS_IDS
    assert m.is_final() and not m.is_terminated()
    assert m.advance(A) and allowed(m, hand) == {B}  # a second "ab" after a complete match
    assert m.advance(B) and m.advance(C)
    assert allowed(m, hand) == EOS_IDS and m.is_terminated()


def test_float_dtype_allows_a_dot_after_a_complete_number(hand) -> None:
    m = hand.compile(GrammarSpec("dtype", "float")).matcher()
    digits = {D0, D1, D2}
    assert allowed(m, hand) == digits | {DOT, ONE_DOT}
    assert m.advance(D1) and allowed(m, hand) == digits | {DOT, ONE_DOT} | EOS_IDS
    assert m.advance(DOT) and allowed(m, hand) == digits and not m.is_final()
    assert m.advance(D2) and m.is_final() and not m.is_terminated()


def test_forced_bytes_stops_without_an_exact_token() -> None:
    vocab = TokenVocabulary([b"abx", b"aby", b"z", None], eos_token_ids=[3])
    backend = OutlinesBackend.from_vocabulary(vocab)
    assert backend.compile(regex("ab[xy]z")).matcher().forced_bytes() == b"ab"


def test_tiny_mask_cache_still_gives_exact_masks() -> None:
    vocab = TokenVocabulary(TOKENS, eos_token_ids=[EOS, EOS2])
    backend = OutlinesBackend.from_vocabulary(vocab, HAND_VOCAB_SIZE, mask_cache_bytes=1)
    m = backend.compile(regex("(ab)+c?")).matcher()
    for tok, expected in (
        (A, {B}),
        (B, {A, AB, ABC, C} | EOS_IDS),
        (AB, {A, AB, ABC, C} | EOS_IDS),
    ):
        assert m.advance(tok) and allowed(m, backend) == expected
    assert len(backend.mask_cache) == 1


def test_regex_the_vocabulary_cannot_produce(hand) -> None:
    with pytest.raises(GrammarError, match="cannot produce"):
        hand.compile(regex("az"))


# --- random walks ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2():
    tokenizer = load_tokenizer(GPT2_DIR)
    return tokenizer, OutlinesBackend(tokenizer, 50304, [tokenizer.eos_token_id])


def test_stories_non_ascii_regex_walks_fullmatch() -> None:
    tokenizer = load_tokenizer(STORIES_DIR)
    backend = OutlinesBackend(tokenizer, 512, [tokenizer.eos_token_id])
    pattern = "(é|日本)+!"
    grammar = backend.compile(regex(pattern))
    for seed in range(5):
        ids = walk(backend, grammar, seed, free_steps=100)
        text = backend.vocab.decode(ids).decode("utf-8")
        assert re.fullmatch(pattern, text), text
        assert tokenizer.decode(ids) == text


# --- every kind, on the small SentencePiece vocabulary ---------------------------------------


@pytest.fixture(scope="module")
def stories() -> OutlinesBackend:
    tokenizer = load_tokenizer(STORIES_DIR)
    return OutlinesBackend(tokenizer, 512, [tokenizer.eos_token_id], max_depth=2)


def test_choice_that_prefixes_another_is_reachable(stories) -> None:
    m = stories.compile(GrammarSpec("choices", json.dumps(CHOICES))).matcher()
    for char in b"yes":
        assert m.advance(stories.vocab.ids_by_bytes[bytes([char])][0])
    assert m.is_final() and not m.is_terminated()  # "yes" may end or go on to "yes please"
    assert m.copy().advance(stories.eos_token_ids[0])
    assert m.advance(stories.vocab.ids_by_bytes[b" "][0])
    assert not m.is_final() and m.forced_bytes() == b"please"


# --- errors ---------------------------------------------------------------------------------

ERRORS = [  # the errors of both backends are in test_constrained_backends_common.py
    (regex("(a{1000}){1000}"), "unrolls to about 1000000"),
    (
        GrammarSpec("json_schema", '{"not": {"type": "string"}}'),
        "cannot enforce these json_schema keywords",
    ),
]


@pytest.mark.parametrize("spec, message", ERRORS, ids=[f"{s.kind}-{m[:16]}" for s, m in ERRORS])
def test_specs_outlines_refuses_raise_grammar_error(stories, spec, message) -> None:
    with pytest.raises(GrammarError, match=message):
        stories.compile(spec)


def test_free_text_bound_scales_with_the_vocabulary(gpt2, stories) -> None:
    spec = GrammarSpec("json_schema", json.dumps({"type": "string", "maxLength": 5000}))
    with pytest.raises(GrammarError, match="free text at about 5000 positions"):
        gpt2[1].compile(spec)
    assert stories.limits.max_wide_positions > 5000  # a 512-token vocabulary may


def test_bad_max_depth_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="max_depth"):
        OutlinesBackend.from_vocabulary(TokenVocabulary(TOKENS, [EOS]), max_depth=0)


def test_anchors_at_the_ends_are_dropped(hand) -> None:
    m = hand.compile(regex("^ab$")).matcher()
    assert m.advance(AB) and m.is_terminated()
