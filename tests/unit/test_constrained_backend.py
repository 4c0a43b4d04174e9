"""OutlinesBackend: exact masks on a hand-made vocabulary, random walks on real tokenizers.

A walk samples only tokens its mask allows and checks the backend's invariants at every step
(EOS bit == is_final, no padding bits, the mask agrees with advance); the decoded output must
then satisfy the spec (regex fullmatch, json.loads + jsonschema, ...).
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

from radixlm.constrained.base import GrammarBackend, GrammarSpec
from radixlm.constrained.outlines_backend import OutlinesBackend
from radixlm.constrained.specs import DTYPE_REGEXES
from radixlm.constrained.vocabulary import TokenVocabulary
from radixlm.errors import ConfigError, GrammarError
from radixlm.tokenizer import load_tokenizer
from tests.unit.constrained_helpers import (
    AB,
    ABC,
    CASES,
    CHOICES,
    COLON,
    D0,
    D1,
    D2,
    DOT,
    EOS,
    EOS2,
    EOS_IDS,
    GPT2_DIR,
    HAND_VOCAB_SIZE,
    LBRACE,
    ONE_DOT,
    PERSON,
    QUOTE,
    RBRACE,
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


def test_advance_rejects_disallowed_tokens_without_moving(hand) -> None:
    m = hand.compile(regex(r'\{"a":[0-2]\}')).matcher()
    assert allowed(m, hand) == {LBRACE}
    for bad in (A, RBRACE, EOS, EOS2, 16, 39, 1000, -1):  # letters, EOS, padding, out of range
        assert not m.advance(bad)
    assert allowed(m, hand) == {LBRACE}
    for tok in (LBRACE, QUOTE, A, QUOTE, COLON):
        assert m.advance(tok)
    assert allowed(m, hand) == {D0, D1, D2}
    assert m.advance(D2) and allowed(m, hand) == {RBRACE}
    assert m.advance(RBRACE) and m.is_terminated() and allowed(m, hand) == EOS_IDS


def test_eos_is_allowed_exactly_in_final_states_and_terminates(hand) -> None:
    m = hand.compile(regex("a(bc)?")).matcher()
    assert not m.advance(EOS)
    assert m.advance(A) and m.is_final() and EOS_IDS <= allowed(m, hand)
    assert m.advance(EOS2)  # any of the EOS ids
    assert m.is_terminated() and m.is_final() and allowed(m, hand) == EOS_IDS
    assert not m.advance(B)
    m.rollback(1)
    assert not m.is_terminated() and allowed(m, hand) == {B} | EOS_IDS


def test_rollback_and_copy(hand) -> None:
    m = hand.compile(regex("(ab)+c?")).matcher()
    start = allowed(m, hand)
    for tok in (AB, A, B):
        assert m.advance(tok)
    twin = m.copy()
    m.rollback(1)
    assert allowed(m, hand) == {B}
    assert allowed(twin, hand) == {A, AB, ABC, C} | EOS_IDS  # the copy did not move
    assert twin.advance(C) and twin.is_terminated() and not m.is_terminated()
    m.rollback(2)
    assert allowed(m, hand) == start
    with pytest.raises(ValueError):
        m.rollback(1)
    twin.rollback(4)
    assert allowed(twin, hand) == start


def test_forced_bytes(hand) -> None:
    m = hand.compile(regex("abc[0-9]")).matcher()
    assert m.forced_bytes() == b"abc"
    assert allowed(m, hand) == {A, AB, ABC}  # a query, not an advance
    m2 = hand.compile(regex(r'\{"a":[0-2]\}')).matcher()
    assert m2.forced_bytes() == b'{"a":'
    assert m2.advance(LBRACE) and m2.advance(QUOTE) and m2.forced_bytes() == b'a":'
    assert m2.advance(A) and m2.advance(QUOTE) and m2.advance(COLON) and m2.forced_bytes() == b""
    assert m2.advance(D1) and m2.forced_bytes() == b"}"
    assert m2.advance(RBRACE) and m2.forced_bytes() == b""  # terminated
    assert hand.compile(regex("a(bc)?")).matcher().forced_bytes() == b"a"  # stops when final


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


def test_gpt2_json_schema_random_walks_validate(gpt2) -> None:
    tokenizer, backend = gpt2
    grammar = backend.compile(GrammarSpec("json_schema", json.dumps(PERSON)))
    for seed in range(3):
        ids = walk(backend, grammar, seed)
        text = backend.vocab.decode(ids).decode("utf-8")
        assert tokenizer.decode(ids) == text
        jsonschema.validate(json.loads(text), PERSON)


def test_gpt2_forced_bytes_after_brace(gpt2) -> None:
    tokenizer, backend = gpt2
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    spec = GrammarSpec("json_schema", json.dumps(schema))
    brace, quote = tokenizer.convert_tokens_to_ids("{"), tokenizer.convert_tokens_to_ids('"')
    # Compact JSON: everything up to the value's opening quote is forced.
    compact = OutlinesBackend.from_vocabulary(backend.vocab, 50304, whitespace_pattern="")
    m = compact.compile(spec).matcher()
    assert m.forced_bytes() == b'{"name":"'
    assert m.advance(brace) and m.forced_bytes() == b'"name":"'
    # The default whitespace "[ ]?" may put a space after "{": nothing is forced until "\"".
    m = backend.compile(spec).matcher()
    assert m.forced_bytes() == b"{"
    assert m.advance(brace) and m.forced_bytes() == b""
    assert m.advance(quote) and m.forced_bytes() == b'name"'


def test_gpt2_apply_mask_keeps_exactly_the_allowed_ids(gpt2) -> None:
    tokenizer, backend = gpt2
    m = backend.compile(regex(r"[0-9]{1,3}")).matcher()
    eos = tokenizer.eos_token_id
    for text in ("", "4", "42", "427"):
        if text:
            assert m.advance(tokenizer.convert_tokens_to_ids(text[-1]))
        mask = backend.allocate_mask(2)
        m.fill_mask(mask, 1)
        logits = torch.randn(2, 50304)
        GrammarBackend.apply_mask(logits, mask)
        assert torch.isfinite(logits[0]).all()  # row 0 was left all-allowed
        finite = set(torch.nonzero(torch.isfinite(logits[1])).flatten().tolist())
        assert finite == allowed(m, backend)
        assert (eos in finite) == bool(text)  # EOS only after at least one digit
        assert max(finite - {eos}, default=0) < 50257  # padding rows never allowed
        digits = [tokenizer.decode([i]) for i in finite - {eos}]
        assert all(d.isdigit() and len(text) + len(d) <= 3 for d in digits)
        assert bool(digits) == (len(text) < 3)
    assert m.is_terminated()


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


@pytest.mark.parametrize("spec, check", CASES, ids=[f"{s.kind}-{s.value[:12]}" for s, _ in CASES])
def test_every_kind_walks_to_matching_output(stories, spec, check) -> None:
    grammar = stories.compile(spec)
    seen = set()
    for seed in range(4):
        text = stories.vocab.decode(walk(stories, grammar, seed)).decode("utf-8")
        assert check(text) is not False, text
        if spec.kind == "dtype" and spec.value != "str":
            assert re.fullmatch(DTYPE_REGEXES[spec.value], text), text
        seen.add(text)
    assert len(seen) > 1 or spec.kind == "choices"


def test_choice_that_prefixes_another_is_reachable(stories) -> None:
    m = stories.compile(GrammarSpec("choices", json.dumps(CHOICES))).matcher()
    for char in b"yes":
        assert m.advance(stories.vocab.ids_by_bytes[bytes([char])][0])
    assert m.is_final() and not m.is_terminated()  # "yes" may end or go on to "yes please"
    assert m.copy().advance(stories.eos_token_ids[0])
    assert m.advance(stories.vocab.ids_by_bytes[b" "][0])
    assert not m.is_final() and m.forced_bytes() == b"please"


# --- errors ---------------------------------------------------------------------------------

ERRORS = [
    (regex("(ab"), "not a valid regex: missing \\)"),
    (regex("a(?=b)"), "lookaround"),
    (regex("a$b"), "anchor"),
    (regex("a{,3}"), "not supported by the outlines grammar engine"),
    (regex("(a{1000}){1000}"), "unrolls to about 1000000"),
    (regex("a" * 100_001), "100001 characters, more than the limit of 100000"),
    (GrammarSpec("json_schema", '{"type":'), "not valid JSON: Expecting value"),
    (GrammarSpec("json_schema", '{"type": 5}'), "not a valid JSON Schema at type"),
    (GrammarSpec("json_schema", '{"not": {"type": "string"}}'), "unsupported json_schema"),
    (GrammarSpec("json_schema", "[1]"), "must be a JSON object"),
    (GrammarSpec("choices", "[]"), "non-empty JSON list of strings"),
    (GrammarSpec("choices", "yes"), "JSON list of strings"),
    (GrammarSpec("dtype", "complex"), "unknown dtype 'complex'"),
    (GrammarSpec("ebnf", "root ::= x"), "not supported by the outlines grammar backend"),
    (GrammarSpec("lark", "start: x"), "unknown grammar kind 'lark'"),
]


@pytest.mark.parametrize("spec, message", ERRORS, ids=[f"{s.kind}-{m[:16]}" for s, m in ERRORS])
def test_bad_specs_raise_grammar_error(stories, spec, message) -> None:
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
