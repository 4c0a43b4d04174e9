"""Backend selection (``create_backend``) and ``AutoBackend``: per spec kind a fixed chain, each
backend but the last asked to enforce the spec exactly; decided from the spec alone."""

from __future__ import annotations

import json

import pytest

from radixlm.constrained.backends import AUTO_CHAINS, AutoBackend, create_backend
from radixlm.constrained.base import GrammarSpec
from radixlm.constrained.llguidance_backend import LLGuidanceBackend, LLGuidanceGrammar
from radixlm.constrained.outlines_backend import OutlinesBackend, OutlinesGrammar
from radixlm.constrained.vocabulary import TokenVocabulary
from radixlm.errors import ConfigError, GrammarError
from radixlm.tokenizer import load_tokenizer
from tests.unit.constrained_helpers import (
    EOS,
    EOS2,
    EOS_IDS,
    HAND_VOCAB_SIZE,
    STORIES_DIR,
    TOKENS,
    A,
    B,
    C,
    allowed,
    regex,
)


@pytest.fixture(scope="module")
def hand_auto() -> AutoBackend:
    vocab = TokenVocabulary(TOKENS, eos_token_ids=[EOS, EOS2])
    outlines = OutlinesBackend.from_vocabulary(vocab, HAND_VOCAB_SIZE, max_transitions=200)
    guidance = LLGuidanceBackend.from_vocabulary(vocab, HAND_VOCAB_SIZE)
    auto = AutoBackend({"outlines": outlines, "llguidance": guidance})
    yield auto
    auto.close()


def test_auto_routes_each_spec(hand_auto) -> None:
    assert isinstance(hand_auto.compile(regex("(ab)+c?")), OutlinesGrammar)
    # over the outlines size guard (free text at 20 positions > 200 transitions / 13 tokens)
    assert isinstance(hand_auto.compile(regex(".{20}")), LLGuidanceGrammar)
    assert isinstance(hand_auto.compile(GrammarSpec("ebnf", 'start: "a"+')), LLGuidanceGrammar)
    assert isinstance(hand_auto.compile(GrammarSpec("json_object", "")), LLGuidanceGrammar)
    schema = GrammarSpec("json_schema", json.dumps({"enum": ["ab", "c"]}))
    assert isinstance(hand_auto.compile(schema), LLGuidanceGrammar)  # JSON: llguidance first
    with pytest.raises(GrammarError, match="not a valid regex"):
        hand_auto.compile(regex("(ab"))


def test_the_route_depends_on_the_spec_alone(hand_auto) -> None:
    """The same spec always lands on the same backend (no timing, no load)."""
    for spec in (regex("(ab)+c?"), regex(".{20}"), GrammarSpec("choices", '["ab", "c"]')):
        names = {hand_auto.build(spec).backend for _ in range(3)}
        assert len(names) == 1
    assert set(AUTO_CHAINS) == {"json_schema", "json_object", "ebnf", "regex", "choices", "dtype"}


def test_matchers_of_both_backends_share_one_mask(hand_auto) -> None:
    fast = hand_auto.compile(regex("(ab)+c?")).matcher()
    lazy = hand_auto.compile(GrammarSpec("ebnf", 'start: ("a" | "b")+ "c"')).matcher()
    mask = hand_auto.allocate_mask(2)
    fast.fill_mask(mask, 0)
    lazy.fill_mask(mask, 1)
    assert fast.advance(A) and lazy.advance(B)
    assert allowed(fast, hand_auto.members["outlines"]) == {B}
    assert C in allowed(lazy, hand_auto.members["llguidance"])
    assert not EOS_IDS & allowed(lazy, hand_auto.members["llguidance"])


def test_create_backend_by_name() -> None:
    tokenizer = load_tokenizer(STORIES_DIR)
    made = {
        name: create_backend(name, tokenizer, 512, [tokenizer.eos_token_id])
        for name in ("outlines", "llguidance", "auto")
    }
    assert isinstance(made["outlines"], OutlinesBackend)
    assert isinstance(made["llguidance"], LLGuidanceBackend)
    assert isinstance(made["auto"], AutoBackend)
    bounded = GrammarSpec("json_schema", json.dumps({"type": "integer", "minimum": 3}))
    assert made["auto"].build(bounded).backend == "llguidance"  # outlines cannot bound numbers
    unique = GrammarSpec("json_schema", json.dumps({"type": "array", "uniqueItems": True}))
    artifact = made["auto"].build(unique)  # no backend enforces it: the last one drops it
    assert artifact.backend == "llguidance"
    assert [str(u) for u in artifact.unenforced] == ["/: uniqueItems"]
    strict = create_backend("auto", tokenizer, 512, [2], unenforced="reject")
    with pytest.raises(GrammarError, match="/: uniqueItems"):
        strict.build(unique)
    with pytest.raises(ConfigError, match="unknown grammar backend 'lark'"):
        create_backend("lark", tokenizer, 512, [2])
    for backend in (*made.values(), strict):
        backend.close()
