"""What every grammar backend must do alike, run once per backend (outlines-core, llguidance):
exact masks and EOS / rollback / copy / jump-forward semantics on a hand-made vocabulary, errors
for bad specs, and random walks on real tokenizers.

A walk samples only tokens its mask allows and checks the backend's invariants at every step
(EOS bit == is_final, no padding bits, the mask agrees with advance); the decoded output must
then satisfy the spec (regex fullmatch, json.loads + jsonschema, ...). Backend-specific tests
stay in test_constrained_backend.py (outlines) and test_constrained_llguidance.py.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest
import torch

from radixlm.constrained.base import GrammarBackend, GrammarSpec
from radixlm.constrained.llguidance_backend import LLGuidanceBackend
from radixlm.constrained.outlines_backend import OutlinesBackend
from radixlm.constrained.vocabulary import TokenVocabulary
from radixlm.constrained.xgrammar_backend import XGrammarBackend
from radixlm.errors import GrammarError
from radixlm.tokenizer import load_tokenizer
from tests.unit.constrained_helpers import (
    AB,
    ABC,
    CASES,
    COLON,
    D0,
    D1,
    D2,
    EOS,
    EOS2,
    EOS_IDS,
    GPT2_DIR,
    HAND_VOCAB_SIZE,
    LBRACE,
    PERSON,
    QUOTE,
    RBRACE,
    STORIES_DIR,
    TOKENS,
    A,
    B,
    C,
    allowed,
    check_walks,
    regex,
    walk,
)

BACKENDS = {"outlines": OutlinesBackend, "llguidance": LLGuidanceBackend}


@pytest.fixture(scope="module", params=["outlines", "llguidance"])
def name(request) -> str:
    """The backend under test."""
    return request.param


@pytest.fixture(scope="module")
def hand(name) -> GrammarBackend:
    vocab = TokenVocabulary(TOKENS, eos_token_ids=[EOS, EOS2])
    return BACKENDS[name].from_vocabulary(vocab, HAND_VOCAB_SIZE)


@pytest.fixture(scope="module", params=["outlines", "llguidance", "xgrammar"])
def any_hand(request) -> GrammarBackend:
    """Every backend, xgrammar included, for the matcher semantics all of them share."""
    cls = XGrammarBackend if request.param == "xgrammar" else BACKENDS[request.param]
    return cls.from_vocabulary(TokenVocabulary(TOKENS, eos_token_ids=[EOS, EOS2]), HAND_VOCAB_SIZE)


@pytest.fixture(scope="module", params=["outlines", "llguidance", "xgrammar"])
def any_gpt2(request):
    """Every backend, xgrammar included, over the GPT-2 tokenizer."""
    cls = XGrammarBackend if request.param == "xgrammar" else BACKENDS[request.param]
    tokenizer = load_tokenizer(GPT2_DIR)
    return tokenizer, cls(tokenizer, 50304, [tokenizer.eos_token_id])


@pytest.fixture(scope="module")
def gpt2(name):
    tokenizer = load_tokenizer(GPT2_DIR)
    return tokenizer, BACKENDS[name](tokenizer, 50304, [tokenizer.eos_token_id])


@pytest.fixture(scope="module")
def stories(name) -> GrammarBackend:
    tokenizer = load_tokenizer(STORIES_DIR)
    return BACKENDS[name](tokenizer, 512, [tokenizer.eos_token_id], max_depth=2)


def exact_advance(name: str) -> bool:
    """outlines' ``advance`` accepts exactly the masked tokens; llguidance's at least them (its
    masks offer forced text only in its canonical tokenization)."""
    return name == "outlines"


# --- exact masks on the hand-made vocabulary -------------------------------------------------


def test_advance_rejects_disallowed_tokens_without_moving(name, hand) -> None:
    m = hand.compile(regex(r'\{"a":[0-2]\}')).matcher()
    assert allowed(m, hand) == {LBRACE}
    for bad in (A, RBRACE, EOS, EOS2, 16, 39, 1000, -1):  # letters, EOS, padding, out of range
        assert not m.advance(bad)
    assert allowed(m, hand) == {LBRACE}
    if name == "llguidance":
        assert not m.ll.is_error()
    for tok in (LBRACE, QUOTE, A, QUOTE, COLON):
        assert m.advance(tok)
    assert allowed(m, hand) == {D0, D1, D2}
    assert m.advance(D2) and allowed(m, hand) == {RBRACE}
    assert m.advance(RBRACE) and m.is_terminated() and allowed(m, hand) == EOS_IDS


def test_eos_is_allowed_exactly_in_final_states_and_terminates(any_hand) -> None:
    hand = any_hand
    m = hand.compile(regex("a(bc)?")).matcher()
    assert not m.advance(EOS)
    assert m.advance(A) and m.is_final() and EOS_IDS <= allowed(m, hand)
    assert m.advance(EOS2)  # any of the EOS ids
    assert m.is_terminated() and m.is_final() and allowed(m, hand) == EOS_IDS
    assert not m.advance(B)
    m.rollback(1)
    assert not m.is_terminated() and allowed(m, hand) == {B} | EOS_IDS
    assert m.advance(EOS2) and m.is_terminated()
    assert m.advance(EOS)  # EOS again once terminated
    m.rollback(2)
    assert not m.is_terminated() and allowed(m, hand) == {B} | EOS_IDS


def test_rollback_and_copy(any_hand) -> None:
    hand = any_hand
    m = hand.compile(regex("(ab)+c?")).matcher()
    start = allowed(m, hand)
    for tok in (AB, A, B):
        assert m.advance(tok)
    twin = m.copy()
    m.rollback(1)
    assert allowed(m, hand) == {B}
    assert allowed(twin, hand) == {A, AB, ABC, C} | EOS_IDS  # the copy did not move
    assert twin.advance(C) and twin.is_terminated() and not m.is_terminated()
    assert twin.advance(EOS) and twin.is_terminated()
    m.rollback(2)
    assert allowed(m, hand) == start
    with pytest.raises(ValueError):
        m.rollback(1)
    twin.rollback(5)
    assert allowed(twin, hand) == start


def test_forced_bytes(name, hand) -> None:
    m = hand.compile(regex("abc[0-9]")).matcher()
    assert m.forced_bytes() == b"abc"
    # a query, not an advance; llguidance offers forced text only in its canonical tokenization
    assert allowed(m, hand) == ({A, AB, ABC} if name == "outlines" else {ABC})
    m2 = hand.compile(regex(r'\{"a":[0-2]\}')).matcher()
    assert m2.forced_bytes() == b'{"a":'
    assert allowed(m2, hand) == {LBRACE}
    assert m2.advance(LBRACE) and m2.advance(QUOTE) and m2.forced_bytes() == b'a":'
    assert m2.advance(A) and m2.advance(QUOTE) and m2.advance(COLON) and m2.forced_bytes() == b""
    assert m2.advance(D1) and m2.forced_bytes() == b"}"
    assert m2.advance(RBRACE) and m2.forced_bytes() == b""  # terminated
    assert hand.compile(regex("a(bc)?")).matcher().forced_bytes() == b"a"  # stops when final


# --- errors ---------------------------------------------------------------------------------

OUTLINES_EBNF = "not supported by the outlines grammar backend"
ERRORS = [  # spec, outlines' message, llguidance's message (None: the same)
    (regex("(ab"), "not a valid regex: missing \\)", "cannot be compiled"),
    (regex("a(?=b)"), "lookaround", "cannot be compiled"),
    (regex("a$b"), "anchor", "cannot be compiled"),
    (regex("a{,3}"), "not supported by the outlines grammar engine", "cannot be compiled"),
    (regex("a" * 262_145), "262145 characters, more than the limit of 262144", None),
    (GrammarSpec("json_schema", '{"type":'), "not valid JSON: Expecting value", None),
    (GrammarSpec("json_schema", '{"type": 5}'), "not a valid JSON Schema at type", None),
    (GrammarSpec("json_schema", "[1]"), "must be a JSON object", None),
    (GrammarSpec("choices", "[]"), "non-empty JSON list of strings", None),
    (GrammarSpec("choices", "yes"), "JSON list of strings", None),
    (GrammarSpec("dtype", "complex"), "unknown dtype 'complex'", None),
    (GrammarSpec("lark", "start: x"), "unknown grammar kind 'lark'", None),
    (GrammarSpec("ebnf", "start: ("), OUTLINES_EBNF, "cannot be compiled"),
    (GrammarSpec("ebnf", "root ::= foo"), OUTLINES_EBNF, "invalid ebnf"),
]


@pytest.mark.parametrize(
    "spec, outlines_message, llguidance_message",
    ERRORS,
    ids=[f"{s.kind}-{s.value[:12]}" for s, _, _ in ERRORS],
)
def test_bad_specs_raise_grammar_error(
    name, stories, spec, outlines_message, llguidance_message
) -> None:
    message = outlines_message if name == "outlines" else llguidance_message or outlines_message
    with pytest.raises(GrammarError, match=message):
        stories.compile(spec)


# --- real tokenizers ------------------------------------------------------------------------


def test_gpt2_json_schema_random_walks_validate(name, gpt2) -> None:
    tokenizer, backend = gpt2
    grammar = backend.compile(GrammarSpec("json_schema", json.dumps(PERSON)))
    for seed in range(3):
        ids = walk(backend, grammar, seed, exact_advance=exact_advance(name))
        text = backend.vocab.decode(ids).decode("utf-8")
        assert tokenizer.decode(ids) == text
        jsonschema.validate(json.loads(text), PERSON)


def test_gpt2_forced_bytes_follow_the_whitespace_pattern(gpt2) -> None:
    tokenizer, backend = gpt2
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    spec = GrammarSpec("json_schema", json.dumps(schema))
    brace, quote = tokenizer.convert_tokens_to_ids("{"), tokenizer.convert_tokens_to_ids('"')
    # Compact JSON (the default): everything up to the value's opening quote is forced.
    m = backend.compile(spec).matcher()
    assert m.forced_bytes() == b'{"name":"'
    assert m.advance(brace) and m.forced_bytes() == b'"name":"'
    # A whitespace "[ ]?" may put a space after "{": nothing is forced until "\"".
    spaced = type(backend).from_vocabulary(backend.vocab, 50304, whitespace_pattern="[ ]?")
    m = spaced.compile(spec).matcher()
    assert m.forced_bytes() == b"{"
    assert m.advance(brace) and m.forced_bytes() == b""
    assert m.advance(quote) and m.forced_bytes() == b'name"'


def test_gpt2_apply_mask_keeps_exactly_the_allowed_ids(any_gpt2) -> None:
    tokenizer, backend = any_gpt2
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


def test_compiles_on_many_threads_agree_with_one(any_gpt2) -> None:
    _, backend = any_gpt2
    specs = [regex(f"[a-c]{{{n}}}x") for n in range(1, 9)] + [
        GrammarSpec("json_schema", json.dumps({**PERSON, "required": [k]}))
        for k in PERSON["properties"]
    ]
    with ThreadPoolExecutor(4) as pool:
        grammars = list(pool.map(backend.compile, specs))
    for spec, grammar in zip(specs, grammars):
        alone = backend.compile(spec).matcher()
        assert allowed(grammar.matcher(), backend) == allowed(alone, backend)


# --- every kind, on the small SentencePiece vocabulary ---------------------------------------


@pytest.mark.parametrize("spec, check", CASES, ids=[f"{s.kind}-{s.value[:12]}" for s, _ in CASES])
def test_every_kind_walks_to_matching_output(name, stories, spec, check) -> None:
    check_walks(stories, spec, check, exact_advance(name))
