"""Constrained decoding end to end on the engine: every completed output matches its regex or
validates against its schema, greedy and sampled, with jump-forward on and off, overlapped or
not, mixed with unconstrained requests; bad specs are RequestErrors and nothing leaks."""

from __future__ import annotations

import json
import re
import threading
import time

import jsonschema
import pytest

from radixlm.errors import RequestError

PROMPTS = ["Once upon a time", "Lily and Tom went to the park", "The little dog was sad"]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer"},
        "happy": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
    },
    "required": ["name", "age", "happy", "color"],
}
REGEXES = [r"(yes|no)", r"[0-9]{3}-[0-9]{4}", r"[A-Z][a-z]{2,8} (is|was) (happy|sad)\."]


def _valid_json(text: str, schema: dict) -> None:
    jsonschema.validate(json.loads(text), schema)


def _completed(r: dict) -> bool:
    return r["meta_info"]["finish_reason"]["type"] == "stop"


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_regex_outputs_match(make_engine, temperature):
    engine = make_engine()
    for rx in REGEXES:
        sp = {"regex": rx, "temperature": temperature, "max_new_tokens": 40, "sampling_seed": 3}
        for r in engine.generate(PROMPTS, sp):
            assert _completed(r), r["meta_info"]
            assert re.fullmatch(rx, r["text"]), (rx, r["text"])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("jump", [True, False])
def test_json_schema_outputs_validate(make_engine, tiny_models, temperature, jump):
    for model in (None, tiny_models["qwen2"]):
        engine = make_engine(model, disable_jump_forward=not jump)
        sp = {"json_schema": json.dumps(PERSON), "temperature": temperature,
              "max_new_tokens": 120, "sampling_seed": 5}  # fmt: skip
        results = engine.generate(PROMPTS, sp)
        done = [r for r in results if _completed(r)]
        assert done, "every output was cut by max_new_tokens"
        for r in done:
            _valid_json(r["text"], PERSON)


def test_json_mode_gives_objects(make_engine):
    engine = make_engine()
    sp = {"json_schema": {"type": "object"}, "temperature": 1.0, "max_new_tokens": 80,
          "sampling_seed": 1}  # fmt: skip
    for r in engine.generate(PROMPTS, sp):
        if _completed(r):
            assert isinstance(json.loads(r["text"]), dict)


def test_jump_forward_takes_fewer_steps(make_engine):
    sp = {"json_schema": json.dumps(PERSON), "temperature": 0, "max_new_tokens": 120}
    stats = {}
    outputs = {}
    for jump in (True, False):
        engine = make_engine(disable_jump_forward=not jump)
        outputs[jump] = engine.generate(PROMPTS[0], sp)
        stats[jump] = engine.scheduler.stats
    _valid_json(outputs[True]["text"], PERSON)
    _valid_json(outputs[False]["text"], PERSON)
    assert stats[True].jump_forward_tokens > 0 and stats[False].jump_forward_tokens == 0
    assert stats[True].forward_steps < stats[False].forward_steps


def test_mixed_batch_leaves_unconstrained_outputs_alone(make_engine):
    engine = make_engine()
    plain = {"temperature": 0, "max_new_tokens": 30}
    alone = engine.generate(PROMPTS, plain)
    mixed = engine.generate(
        PROMPTS + PROMPTS, [plain] * 3 + [{**plain, "regex": r"[0-9]+ cats"}] * 3
    )
    assert [r["output_ids"] for r in mixed[:3]] == [r["output_ids"] for r in alone]
    for r in mixed[3:]:
        assert re.fullmatch(r"[0-9]+ cats", r["text"]) or not _completed(r)


def test_overlap_gives_the_same_constrained_outputs(make_engine):
    sp = {"json_schema": json.dumps(PERSON), "temperature": 0, "max_new_tokens": 100}
    on = make_engine(enable_overlap_schedule=True).generate(PROMPTS, sp)
    off = make_engine(disable_overlap_schedule=True).generate(PROMPTS, sp)
    assert [r["output_ids"] for r in on] == [r["output_ids"] for r in off]


def test_identical_specs_compile_once(make_engine):
    engine = make_engine()
    sp = {"regex": r"(cat|dog)s?", "temperature": 1.0, "max_new_tokens": 5}
    engine.generate(PROMPTS * 4, sp)
    engine.generate(PROMPTS, sp)
    assert engine.scheduler.grammars._compiler.num_compiles == 1


@pytest.mark.parametrize(
    "sp,needle",
    [
        ({"regex": "a(("}, "regex"),
        ({"json_schema": "{not json"}, "schema"),
        ({"ebnf": "root ::= 'a'"}, "ebnf"),
        ({"regex": "a+", "json_schema": "{}"}, "at most one"),
    ],
)
def test_bad_specs_are_request_errors(make_engine, sp, needle):
    engine = make_engine()
    with pytest.raises(RequestError, match=needle):
        engine.generate(PROMPTS[0], {**sp, "max_new_tokens": 5})
    assert engine.generate(PROMPTS[0], {"max_new_tokens": 3})["meta_info"]["completion_tokens"] == 3


def test_compile_timeout_and_size_limit_are_request_errors(make_engine):
    engine = make_engine(grammar_backend="outlines", grammar_compile_timeout=0.001)
    with pytest.raises(RequestError, match="longer than"):
        engine.generate(PROMPTS[0], {"json_schema": {"type": "object"}, "max_new_tokens": 4})
    engine = make_engine(grammar_max_spec_chars=50)
    with pytest.raises(RequestError, match="limit of 50"):
        engine.generate(PROMPTS[0], {"regex": "a" * 60, "max_new_tokens": 4})


def test_unenforced_schema_keywords_policy(make_engine):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 3}},
              "required": ["n"]}  # fmt: skip
    sp = {"json_schema": json.dumps(schema), "max_new_tokens": 20, "temperature": 0}
    assert make_engine().generate(PROMPTS[0], sp)["meta_info"]["finish_reason"]
    strict = make_engine(grammar_backend="outlines", json_schema_unenforced="reject")
    with pytest.raises(RequestError, match="minimum"):
        strict.generate(PROMPTS[0], sp)


def test_slow_compile_does_not_delay_other_requests(make_engine, monkeypatch):
    from radixlm.sampling_params import SamplingParams
    from radixlm.scheduler.io import TokenizedRequest

    engine = make_engine()
    engine.generate(PROMPTS[0], {"regex": "x", "max_new_tokens": 1})  # start the compiler
    compiler = engine.scheduler.grammars._compiler
    real_pool = compiler.pool
    fast_done = threading.Event()

    class GatedTicket:  # a build that ends only once the unconstrained request has finished
        def __init__(self, ticket):
            self.ticket = ticket

        def done(self):
            return fast_done.is_set() and self.ticket.done()

        def wait(self, timeout=None):
            return fast_done.wait(timeout) and self.ticket.wait(timeout)

        def result(self):
            return self.ticket.result()

        def cancel(self):
            return self.ticket.cancel()

    class GatedPool:
        def submit(self, key, payload):
            ticket = real_pool.submit(key, payload)
            return GatedTicket(ticket) if payload.value == "slow+" else ticket

        def close(self):
            real_pool.close()

    monkeypatch.setattr(compiler, "pool", GatedPool())
    ids = engine.tokenizer.encode(PROMPTS[1])
    sched = engine.scheduler
    sched.add_requests(
        [
            TokenizedRequest("slow", ids, SamplingParams(max_new_tokens=4, regex="slow+")),
            TokenizedRequest("fast", ids, SamplingParams(max_new_tokens=8)),
        ]
    )
    finished: list[str] = []
    deadline = time.monotonic() + 60
    while len(finished) < 2 and time.monotonic() < deadline:
        for out in sched.step():
            if out.finished:
                finished.append(out.rid)
                if out.rid == "fast":
                    fast_done.set()
        if not sched.has_runnable_work():
            time.sleep(0.001)
    assert finished == ["fast", "slow"]


# --- the llguidance and auto grammar backends ----------------------------------------------

EBNF = 'start: pet ("," pet)*\npet: "cat" | "dog"'


@pytest.mark.parametrize("jump", [True, False])
def test_llguidance_backend_regex_schema_and_ebnf(make_engine, jump):
    engine = make_engine(grammar_backend="llguidance", disable_jump_forward=not jump)
    base = {"temperature": 1.0, "sampling_seed": 7}
    for rx in REGEXES:
        for r in engine.generate(PROMPTS, {**base, "regex": rx, "max_new_tokens": 40}):
            assert _completed(r) and re.fullmatch(rx, r["text"]), (rx, r["text"])
    sp = {**base, "json_schema": json.dumps(PERSON), "max_new_tokens": 120}
    done = [r for r in engine.generate(PROMPTS, sp) if _completed(r)]
    assert done, "every output was cut by max_new_tokens"
    for r in done:
        _valid_json(r["text"], PERSON)
    for r in engine.generate(PROMPTS, {**base, "ebnf": EBNF, "max_new_tokens": 16}):
        assert not _completed(r) or re.fullmatch(r"(cat|dog)(,(cat|dog))*", r["text"]), r["text"]


def test_ebnf_is_refused_by_outlines_and_served_by_auto(make_engine):
    outlines = make_engine(grammar_backend="outlines")
    with pytest.raises(RequestError, match="--grammar-backend llguidance or auto"):
        outlines.generate(PROMPTS[0], {"ebnf": EBNF, "max_new_tokens": 4})
    auto = make_engine(grammar_backend="auto", json_schema_unenforced="reject")
    r = auto.generate(PROMPTS[0], {"ebnf": EBNF, "max_new_tokens": 16, "temperature": 0})
    assert not _completed(r) or re.fullmatch(r"(cat|dog)(,(cat|dog))*", r["text"])
    # outlines refuses "minimum" under reject; auto hands the schema to llguidance, which
    # enforces it
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 3,
              "maximum": 9}}, "required": ["n"]}  # fmt: skip
    sp = {"json_schema": json.dumps(schema), "max_new_tokens": 20, "temperature": 1.0}
    done = [r for r in auto.generate(PROMPTS, sp) if _completed(r)]
    for r in done:
        _valid_json(r["text"], schema)
    assert done and all(r["meta_info"]["constraint"]["backend"] == "llguidance" for r in done)
    assert all(r["meta_info"]["constraint"]["unenforced"] == [] for r in done)


def test_matcher_limit_fails_that_request_only(make_engine):
    """llguidance accepts the first token, then its lexer hits a size limit: the request fails
    with a 400 naming the limit, the others in its batch finish, and the KV is freed (the
    fixture checks the memory invariants)."""
    from radixlm.errors import RequestError

    engine = make_engine()
    with pytest.raises(RequestError, match="cannot be followed past output token 1"):
        engine.generate(
            ["Once upon a time", "The little dog"],
            [{"max_new_tokens": 4, "regex": "(a{1000}){1000}"}, {"max_new_tokens": 4}],
        )
    out = engine.generate("The little dog", {"max_new_tokens": 4, "temperature": 0})
    assert out["meta_info"]["completion_tokens"] == 4
