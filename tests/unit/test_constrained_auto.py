"""Backend selection (``create_backend``) and ``AutoBackend``: outlines-core first, llguidance for
specs it refuses as unsupported or too large or does not compile within its budget."""

from __future__ import annotations

import json
import threading
import time

import pytest

from radixlm.constrained import llguidance_backend
from radixlm.constrained.backends import AutoBackend, create_backend
from radixlm.constrained.base import (
    CompiledGrammar,
    GrammarBackend,
    GrammarSpec,
    UnsupportedGrammarError,
)
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

pytest.importorskip("llguidance")
from radixlm.constrained.llguidance_backend import (  # noqa: E402
    LLGuidanceBackend,
    LLGuidanceGrammar,
)


class FakeBackend(GrammarBackend):
    """Compiles after ``delay_s``, or raises ``error``; records what it was asked."""

    def __init__(self, delay_s: float = 0.0, error: Exception | None = None) -> None:
        self.vocab_size = HAND_VOCAB_SIZE
        self.delay_s = delay_s
        self.error = error
        self.seen: list[GrammarSpec] = []
        self.release = threading.Event()

    def compile(self, spec: GrammarSpec) -> CompiledGrammar:
        self.seen.append(spec)
        self.release.wait(self.delay_s)
        if self.error is not None:
            raise self.error
        return spec  # type: ignore[return-value]  # a stand-in the test can recognise


def test_unsupported_goes_to_the_fallback_and_invalid_does_not() -> None:
    fallback = FakeBackend()
    auto = AutoBackend(FakeBackend(error=UnsupportedGrammarError("too big")), fallback)
    assert auto.compile(regex("x")) == regex("x") and fallback.seen == [regex("x")]
    auto = AutoBackend(FakeBackend(error=GrammarError("bad regex")), fallback)
    with pytest.raises(GrammarError, match="bad regex"):
        auto.compile(regex("y"))
    assert fallback.seen == [regex("x")]  # an invalid spec is not retried


def test_a_primary_crash_goes_to_the_fallback() -> None:
    auto = AutoBackend(FakeBackend(error=RuntimeError("panic")), FakeBackend())
    assert auto.compile(regex("x")) == regex("x")
    assert auto.stats["failed"] == 1


def test_over_budget_goes_to_the_fallback_without_waiting() -> None:
    slow = FakeBackend(delay_s=30)
    auto = AutoBackend(slow, FakeBackend(), budget_s=0.05, max_workers=1)
    start = time.monotonic()
    assert auto.compile(regex("a")) == regex("a")
    assert auto.compile(regex("b")) == regex("b")  # queued behind the runaway: falls back too
    assert time.monotonic() - start < 5
    assert auto.stats == {"primary": 0, "unsupported": 0, "over_budget": 2, "failed": 0}
    assert not auto.wait_idle(0.01)  # the abandoned compile still runs
    slow.release.set()
    assert auto.wait_idle(5)
    auto.close()
    assert slow.seen == [regex("a")]  # the queued compile was cancelled, never started


@pytest.fixture(scope="module")
def hand_auto() -> AutoBackend:
    vocab = TokenVocabulary(TOKENS, eos_token_ids=[EOS, EOS2])
    outlines = OutlinesBackend.from_vocabulary(vocab, HAND_VOCAB_SIZE, max_transitions=200)
    guidance = LLGuidanceBackend.from_vocabulary(vocab, HAND_VOCAB_SIZE)
    auto = AutoBackend(outlines, guidance)
    yield auto
    auto.close()


def test_auto_routes_each_spec(hand_auto) -> None:
    assert isinstance(hand_auto.compile(regex("(ab)+c?")), OutlinesGrammar)
    # over the outlines size guard (free text at 20 positions > 200 transitions / 13 tokens)
    assert isinstance(hand_auto.compile(regex(".{20}")), LLGuidanceGrammar)
    assert isinstance(hand_auto.compile(GrammarSpec("ebnf", 'start: "a"+')), LLGuidanceGrammar)
    assert isinstance(hand_auto.compile(GrammarSpec("json_object", "")), LLGuidanceGrammar)
    assert hand_auto.supports("ebnf") and hand_auto.stats["unsupported"] >= 1
    with pytest.raises(GrammarError, match="not a valid regex"):
        hand_auto.compile(regex("(ab"))


def test_matchers_of_both_backends_share_one_mask(hand_auto) -> None:
    fast = hand_auto.compile(regex("(ab)+c?")).matcher()
    lazy = hand_auto.compile(GrammarSpec("ebnf", 'start: ("a" | "b")+ "c"')).matcher()
    mask = hand_auto.allocate_mask(2)
    fast.fill_mask(mask, 0)
    lazy.fill_mask(mask, 1)
    assert fast.advance(A) and lazy.advance(B)
    assert allowed(fast, hand_auto) == {B} and C in allowed(lazy, hand_auto)
    assert not EOS_IDS & allowed(lazy, hand_auto)


def test_create_backend_by_name(monkeypatch) -> None:
    tokenizer = load_tokenizer(STORIES_DIR)
    made = {
        name: create_backend(name, tokenizer, 512, [tokenizer.eos_token_id])
        for name in ("outlines", "llguidance", "auto")
    }
    assert isinstance(made["outlines"], OutlinesBackend)
    assert isinstance(made["llguidance"], LLGuidanceBackend)
    assert isinstance(made["auto"], AutoBackend)
    schema = {"type": "integer", "minimum": 3}  # refused by outlines under "reject"
    strict = create_backend("auto", tokenizer, 512, [2], unenforced="reject")
    assert isinstance(
        strict.compile(GrammarSpec("json_schema", json.dumps(schema))), LLGuidanceGrammar
    )
    with pytest.raises(ConfigError, match="unknown grammar backend 'xgrammar'"):
        create_backend("xgrammar", tokenizer, 512, [2])
    monkeypatch.setattr(llguidance_backend, "llguidance_available", lambda: False)
    assert isinstance(create_backend("auto", tokenizer, 512, [2]), OutlinesBackend)
    for backend in (*made.values(), strict):
        backend.close()
