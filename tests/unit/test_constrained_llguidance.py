"""LLGuidanceBackend only: the same masks as OutlinesBackend on a hand-made vocabulary, dead ends,
ebnf, enforced numeric bounds and closed objects. What every backend must do alike (EOS,
rollback, jump-forward, errors, walks of every kind) is in test_constrained_backends_common.py."""

from __future__ import annotations

import json
import re

import pytest

from radixlm.constrained.base import GrammarSpec
from radixlm.constrained.llguidance_backend import LLGuidanceBackend
from radixlm.constrained.outlines_backend import OutlinesBackend
from radixlm.constrained.specs import DTYPE_REGEXES
from radixlm.constrained.vocabulary import TokenVocabulary
from radixlm.tokenizer import load_tokenizer
from tests.unit.constrained_helpers import (
    AB,
    ABC,
    D1,
    EOS,
    EOS2,
    EOS_IDS,
    GPT2_DIR,
    HAND_VOCAB_SIZE,
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


def test_a_dead_end_allows_eos_and_still_rolls_back(hands) -> None:
    ll, _ = hands
    m = ll.compile(regex("az|b")).matcher()  # no token spells "z"
    assert m.advance(A)
    assert allowed(m, ll) == EOS_IDS and m.is_terminated() and not m.is_final()
    assert m.advance(EOS)
    m.rollback(2)  # replays the history: the error state is gone
    assert allowed(m, ll) == {A, B} and not m.is_terminated()


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


# --- real tokenizers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2():
    tokenizer = load_tokenizer(GPT2_DIR)
    return tokenizer, LLGuidanceBackend(tokenizer, 50304, [tokenizer.eos_token_id])


def test_gpt2_json_numeric_bounds_are_enforced(gpt2) -> None:
    _, backend = gpt2  # outlines-core drops minimum/maximum; llguidance enforces them
    schema = {"type": "integer", "minimum": 10, "maximum": 12}
    grammar = backend.compile(GrammarSpec("json_schema", json.dumps(schema)))
    outputs = {
        backend.vocab.decode(walk(backend, grammar, seed, exact_advance=False)) for seed in range(8)
    }
    assert outputs and outputs <= {b"10", b"11", b"12"}


# --- every kind, on the small SentencePiece vocabulary ---------------------------------------


@pytest.fixture(scope="module")
def stories() -> LLGuidanceBackend:
    tokenizer = load_tokenizer(STORIES_DIR)
    return LLGuidanceBackend(tokenizer, 512, [tokenizer.eos_token_id], max_depth=2)


EBNF = 'start: item ("," item)*\nitem: "cat" | "dog" | NUMBER\nNUMBER: /[0-9]{1,2}/'


def test_ebnf_walks_to_matching_output(stories) -> None:
    """The kinds both backends take walk in test_constrained_backends_common.py."""
    pattern = r"(cat|dog|[0-9]{1,2})(,(cat|dog|[0-9]{1,2}))*"
    check_walks(stories, GrammarSpec("ebnf", EBNF), lambda t: re.fullmatch(pattern, t), False)


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
