"""LLGuidanceBackend: the same masks as OutlinesBackend on a hand-made vocabulary, the same
EOS / rollback / jump-forward semantics, ebnf, and random walks on real tokenizers."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest
import torch

from radixlm.constrained.base import GrammarBackend, GrammarSpec
from radixlm.constrained.outlines_backend import OutlinesBackend
from radixlm.constrained.specs import DTYPE_REGEXES
from radixlm.constrained.vocabulary import TokenVocabulary
from radixlm.errors import GrammarError
from radixlm.tokenizer import load_tokenizer

pytest.importorskip("llguidance")
from radixlm.constrained.llguidance_backend import LLGuidanceBackend  # noqa: E402
from tests.unit.constrained_helpers import (  # noqa: E402
    AB,
    ABC,
    CASES,
    COLON,
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
    regex,
    walk,
)


@pytest.fixture(scope="module")
def hands() -> tuple[LLGuidanceBackend, OutlinesBackend]:
    vocab = TokenVocabulary(TOKENS, eos_token_ids=[EOS, EOS2])
    return (
        LLGuidanceBackend.from_vocabulary(vocab, HAND_VOCAB_SIZE),
        OutlinesBackend.from_vocabulary(vocab, HAND_VOCAB_SIZE),
    )


# --- the same masks as outlines-core, state by state ----------------------------------------

SAME_AS_OUTLINES = [
    "(ab)+c?",
    r'\{"a":[0-2]\}',
    "a(bc)?",
    "(a|b)*c",
    "[0-2]{1,3}(\\.[0-2])?",
    "abc[0-9]",
    "^ab$|^c$",
    DTYPE_REGEXES["float"],
]


@pytest.mark.parametrize("pattern", SAME_AS_OUTLINES)
def test_masks_equal_outlines_on_every_path(hands, pattern) -> None:
    """Equal masks wherever nothing is forced; where text is forced, llguidance offers only its
    canonical (here: greedy) tokenization, a non-empty subset of what outlines offers."""
    ll, ol = hands
    frontier = [(ll.compile(regex(pattern)).matcher(), ol.compile(regex(pattern)).matcher())]
    seen = 0
    for _ in range(5):  # every path of up to 5 tokens, following outlines' masks
        nxt = []
        for m_ll, m_ol in frontier:
            ids, ids_ol = allowed(m_ll, ll), allowed(m_ol, ol)
            assert m_ll.is_final() == m_ol.is_final()
            assert m_ll.is_terminated() == m_ol.is_terminated()
            text = m_ol.forced_bytes()
            assert m_ll.forced_bytes() == text
            if text:
                pieces = ll.vocab.ids_by_bytes
                greedy = max((p for p in pieces if text.startswith(p)), key=len)
                assert pieces[greedy][0] in ids <= ids_ol
            else:
                assert ids == ids_ol
            seen += 1
            for tok in sorted(ids_ol - EOS_IDS):
                a, b = m_ll.copy(), m_ol.copy()
                assert a.advance(tok) and b.advance(tok)  # advance takes any split
                nxt.append((a, b))
        frontier = nxt
    assert seen > 3


def test_advance_rejects_disallowed_tokens_without_moving(hands) -> None:
    ll, _ = hands
    m = ll.compile(regex(r'\{"a":[0-2]\}')).matcher()
    for bad in (A, RBRACE, EOS, EOS2, 16, 39, 1000, -1):  # letters, EOS, padding, out of range
        assert not m.advance(bad)
    assert allowed(m, ll) == {LBRACE} and not m.ll.is_error()
    for tok in (LBRACE, QUOTE, A, QUOTE, COLON, D2, RBRACE):
        assert m.advance(tok)
    assert m.is_terminated() and allowed(m, ll) == EOS_IDS


def test_eos_is_allowed_exactly_in_final_states_and_terminates(hands) -> None:
    ll, _ = hands
    m = ll.compile(regex("a(bc)?")).matcher()
    assert not m.advance(EOS)
    assert m.advance(A) and m.is_final() and EOS_IDS <= allowed(m, ll)
    assert m.advance(EOS2) and m.is_terminated() and allowed(m, ll) == EOS_IDS
    assert not m.advance(B)
    assert m.advance(EOS)  # EOS again, as with outlines
    m.rollback(2)
    assert not m.is_terminated() and allowed(m, ll) == {B} | EOS_IDS


def test_rollback_and_copy(hands) -> None:
    ll, _ = hands
    m = ll.compile(regex("(ab)+c?")).matcher()
    start = allowed(m, ll)
    for tok in (AB, A, B):
        assert m.advance(tok)
    twin = m.copy()
    m.rollback(1)
    assert allowed(m, ll) == {B}
    assert allowed(twin, ll) == {A, AB, ABC, C} | EOS_IDS  # the copy did not move
    assert twin.advance(C) and twin.advance(EOS) and twin.is_terminated()
    assert not m.is_terminated()
    m.rollback(2)
    assert allowed(m, ll) == start
    with pytest.raises(ValueError):
        m.rollback(1)
    twin.rollback(5)
    assert allowed(twin, ll) == start


def test_a_dead_end_allows_eos_and_still_rolls_back(hands) -> None:
    ll, _ = hands
    m = ll.compile(regex("az|b")).matcher()  # no token spells "z"
    assert m.advance(A)
    assert allowed(m, ll) == EOS_IDS and m.is_terminated() and not m.is_final()
    assert m.advance(EOS)
    m.rollback(2)  # replays the history: the error state is gone
    assert allowed(m, ll) == {A, B} and not m.is_terminated()


def test_forced_bytes(hands) -> None:
    ll, _ = hands
    m = ll.compile(regex(r'\{"a":[0-2]\}')).matcher()
    assert m.forced_bytes() == b'{"a":'
    assert allowed(m, ll) == {LBRACE}  # a query, not an advance
    for tok in (LBRACE, QUOTE, A, QUOTE, COLON):
        assert m.advance(tok)
    assert m.forced_bytes() == b""
    assert m.advance(D1) and m.forced_bytes() == b"}"
    assert ll.compile(regex("a(bc)?")).matcher().forced_bytes() == b"a"  # stops when final


@pytest.mark.parametrize(
    "grammar",
    ['start: "ab" ("c" | "1")*', 'root ::= "ab" ("c" | "1")*'],
    ids=["lark", "gbnf"],
)
def test_ebnf_lark_and_gbnf(hands, grammar) -> None:
    ll, ol = hands
    m = ll.compile(GrammarSpec("ebnf", grammar)).matcher()
    assert m.forced_bytes() == b"ab" and allowed(m, ll) == {A, AB, ABC}
    assert m.advance(ABC) and m.is_final() and allowed(m, ll) == {C, D1} | EOS_IDS
    assert ll.supports("ebnf") and not ol.supports("ebnf")


@pytest.mark.parametrize(
    "spec, message",
    [
        (regex("(ab"), "cannot be compiled"),
        (regex("a(?=b)"), "cannot be compiled"),
        (GrammarSpec("ebnf", "start: ("), "cannot be compiled"),
        (GrammarSpec("ebnf", "root ::= foo"), "invalid ebnf"),
        (GrammarSpec("json_schema", '{"type": 5}'), "not a valid JSON Schema at type"),
        (GrammarSpec("choices", "[]"), "non-empty JSON list"),
        (GrammarSpec("dtype", "complex"), "unknown dtype"),
        (GrammarSpec("lark", "x"), "unknown grammar kind"),
        (regex("a" * 100_001), "more than the limit of 100000"),
    ],
)
def test_bad_specs_raise_grammar_error(hands, spec, message) -> None:
    with pytest.raises(GrammarError, match=message):
        hands[0].compile(spec)


# --- real tokenizers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2():
    tokenizer = load_tokenizer(GPT2_DIR)
    return tokenizer, LLGuidanceBackend(tokenizer, 50304, [tokenizer.eos_token_id])


def test_gpt2_json_schema_random_walks_validate(gpt2) -> None:
    tokenizer, backend = gpt2
    grammar = backend.compile(GrammarSpec("json_schema", json.dumps(PERSON)))
    for seed in range(3):
        ids = walk(backend, grammar, seed, exact_advance=False)
        text = backend.vocab.decode(ids).decode("utf-8")
        assert tokenizer.decode(ids) == text
        jsonschema.validate(json.loads(text), PERSON)


def test_gpt2_json_numeric_bounds_are_enforced(gpt2) -> None:
    _, backend = gpt2  # outlines-core drops minimum/maximum; llguidance enforces them
    schema = {"type": "integer", "minimum": 10, "maximum": 12}
    grammar = backend.compile(GrammarSpec("json_schema", json.dumps(schema)))
    outputs = {
        backend.vocab.decode(walk(backend, grammar, seed, exact_advance=False)) for seed in range(8)
    }
    assert outputs and outputs <= {b"10", b"11", b"12"}


def test_gpt2_forced_bytes_follow_the_whitespace_pattern(gpt2) -> None:
    tokenizer, backend = gpt2
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    spec = GrammarSpec("json_schema", json.dumps(schema))
    brace = tokenizer.convert_tokens_to_ids("{")
    compact = LLGuidanceBackend.from_vocabulary(backend.vocab, 50304, whitespace_pattern="")
    m = compact.compile(spec).matcher()
    assert m.forced_bytes() == b'{"name":"'
    assert m.advance(brace) and m.forced_bytes() == b'"name":"'
    m = backend.compile(spec).matcher()  # default "[ ]?", as outlines: a space may follow "{"
    assert m.forced_bytes() == b"{"
    assert m.advance(brace) and m.forced_bytes() == b""


def test_gpt2_mask_has_exactly_the_allowed_ids(gpt2) -> None:
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
        assert (eos in finite) == bool(text)
        assert max(finite - {eos}, default=0) < 50257  # padding rows never allowed
        digits = [tokenizer.decode([i]) for i in finite - {eos}]
        assert all(d.isdigit() and len(text) + len(d) <= 3 for d in digits)
        assert bool(digits) == (len(text) < 3)
    assert m.is_terminated()


def test_compiles_on_many_threads_agree_with_one(gpt2) -> None:
    _, backend = gpt2
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


@pytest.fixture(scope="module")
def stories() -> LLGuidanceBackend:
    tokenizer = load_tokenizer(STORIES_DIR)
    return LLGuidanceBackend(tokenizer, 512, [tokenizer.eos_token_id], max_depth=2)


EBNF = 'start: item ("," item)*\nitem: "cat" | "dog" | NUMBER\nNUMBER: /[0-9]{1,2}/'
LL_CASES = [
    *CASES,
    (
        GrammarSpec("ebnf", EBNF),
        lambda t: re.fullmatch(r"(cat|dog|[0-9]{1,2})(,(cat|dog|[0-9]{1,2}))*", t),
    ),
]


@pytest.mark.parametrize(
    "spec, check", LL_CASES, ids=[f"{s.kind}-{s.value[:12]}" for s, _ in LL_CASES]
)
def test_every_kind_walks_to_matching_output(stories, spec, check) -> None:
    grammar = stories.compile(spec)
    seen = set()
    for seed in range(4):
        ids = walk(stories, grammar, seed, exact_advance=False)
        text = stories.vocab.decode(ids).decode("utf-8")
        assert check(text) is not False, text
        if spec.kind == "dtype" and spec.value != "str":
            assert re.fullmatch(DTYPE_REGEXES[spec.value], text), text
        seen.add(text)
    assert len(seen) > 1 or spec.kind == "choices"


def test_objects_are_closed_unless_that_makes_the_schema_unsatisfiable(gpt2) -> None:
    tokenizer, backend = gpt2
    closed = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    m = backend.compile(GrammarSpec("json_schema", json.dumps(closed))).matcher()
    for tok in tokenizer.encode('{"a":1'):
        assert m.advance(tok)
    comma, brace = tokenizer.convert_tokens_to_ids(","), tokenizer.convert_tokens_to_ids("}")
    assert brace in allowed(m, backend) and comma not in allowed(m, backend)  # no extra property
    # closed, this one could never hold 2 properties: compiled as written (extras allowed)
    spec = GrammarSpec("json_schema", json.dumps({**closed, "minProperties": 2}))
    m = backend.compile(spec).matcher()
    for tok in tokenizer.encode('{"a":1'):
        assert m.advance(tok)
    assert comma in allowed(m, backend)
