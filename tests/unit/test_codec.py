"""The inter-process wire codec (``radixlm.server.codec``).

Proves ``decode(encode(m)) == m`` for every registered message type, exactly: the decoded
object has the same dataclass types and the same plain-data types all the way down (tuple
stays tuple, list stays list, bool stays bool, int dict keys stay int), and the samples cover
every registered type and every dataclass of ``io_struct`` / ``scheduler.io``. Anything else
fails with ``CodecError``: an unregistered dataclass, garbage or truncated bytes, another
version, an unknown tag, a wrong field count, a malformed body.
"""

from __future__ import annotations

import dataclasses
import marshal
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radixlm.sampling_params import SamplingParams
from radixlm.scheduler import io as sched_io
from radixlm.scheduler.io import (
    AbortRequest,
    AbortRequests,
    DetokInit,
    ReqOutput,
    TokenizedRequest,
)
from radixlm.server import codec, io_struct
from radixlm.server.codec import MARK, CodecError, decode, encode
from radixlm.server.io_struct import (
    BatchOutputs,
    BatchTextOutputs,
    ControlReply,
    DetokenizerReady,
    FlushCacheReq,
    GenerateReqs,
    GetStatsReq,
    Heartbeat,
    RequestRejected,
    SchedulerFailed,
    SchedulerReady,
)


def typed(x: Any) -> Any:
    """``x`` with every value tagged by its exact type (floats by ``repr``: nan, -0.0)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return (type(x), tuple((f.name, typed(getattr(x, f.name))) for f in dataclasses.fields(x)))
    if isinstance(x, (list, tuple)):
        return (type(x), tuple(typed(v) for v in x))
    if isinstance(x, dict):
        return (dict, tuple((typed(k), typed(v)) for k, v in x.items()))
    if isinstance(x, float):
        return (float, repr(x))
    return (type(x), x)


def roundtrip(msg: Any) -> Any:
    data = encode(msg)
    assert isinstance(data, bytes)
    out = decode(data)
    assert typed(out) == typed(msg)
    return out


FULL_SAMPLING = SamplingParams(
    max_new_tokens=64,
    min_new_tokens=3,
    stop=("\n\n", "The end", "é日本"),
    stop_token_ids=(2, 13),
    temperature=0.7,
    top_p=0.9,
    top_k=40,
    min_p=0.05,
    frequency_penalty=0.5,
    presence_penalty=-0.25,
    repetition_penalty=1.1,
    n=2,
    ignore_eos=True,
    skip_special_tokens=False,
    spaces_between_special_tokens=False,
    no_stop_trim=True,
    logit_bias={5: -100.0, 300: 2.5, 0: 0.0},
    sampling_seed=1234,
    stream_interval=4,
)

REQ = TokenizedRequest(
    rid="req-1",
    input_ids=[1, 403, 407, 261, 378],
    sampling=FULL_SAMPLING,
    stream=True,
    return_logprob=True,
    logprob_start_len=2,
    top_logprobs_num=3,
    seed_offset=1,
    cache_salt="salt",
    extra_key="lora-a",
)

OUT_FIRST = ReqOutput(
    rid="req-1",
    new_token_ids=[432, 383],
    finished_reason=None,
    prompt_tokens=5,
    completion_tokens=2,
    cached_tokens=1,
    input_token_logprobs=[None, -1.5, -0.25],
    input_top_logprobs=[None, [(-0.5, 7), (-1.5, 9)], [(-0.25, 261), (-3.0, 4)]],
    output_token_logprobs=[-0.125, -2.0],
    output_top_logprobs=[[(-0.125, 432)], [(-2.0, 383), (-2.5, 11)]],
    queue_time=0.0125,
    detok_init=DetokInit(prompt_tail=[403, 407, 261, 378], sampling=FULL_SAMPLING),
)

OUT_LAST = ReqOutput(
    rid="req-2",
    new_token_ids=[2],
    finished_reason={"type": "stop", "matched": 2},
    prompt_tokens=9,
    completion_tokens=17,
    cached_tokens=0,
    num_retractions=2,
)

OUT_ABORT = ReqOutput(
    rid="req-3",
    new_token_ids=[],
    finished_reason={"type": "abort", "message": "aborted by request", "status_code": 400},
    prompt_tokens=3,
    completion_tokens=0,
    cached_tokens=3,
)

MESSAGES: list[Any] = [
    FULL_SAMPLING,
    SamplingParams(),
    REQ,
    TokenizedRequest(rid="r0", input_ids=[], sampling=SamplingParams()),
    AbortRequest("req-1"),
    AbortRequest("req-2", message="client disconnected"),
    AbortRequests(["req-3_0", "req-3_1"], message="client went away"),
    OUT_FIRST,
    OUT_LAST,
    OUT_ABORT,
    DetokInit(prompt_tail=[], sampling=SamplingParams(stop=("x",))),
    GenerateReqs([REQ, TokenizedRequest("r2", [1, 2], SamplingParams(n=3), seed_offset=2)]),
    GenerateReqs([]),
    FlushCacheReq(),
    GetStatsReq(),
    SchedulerReady(
        max_total_tokens=65536,
        max_running_requests=256,
        context_length=4096,
        vocab_size=512,
        dtype="bfloat16",
        device="cuda:0",
        architecture="LlamaForCausalLM",
    ),
    SchedulerFailed("CUDA out of memory"),
    DetokenizerReady(),
    RequestRejected(["a", "b"], "prompt too long", status=413),
    RequestRejected([], "bad"),
    ControlReply("flush_cache", True),
    ControlReply(
        "stats",
        False,
        {
            "num_running": 3,
            "cache": {"hit_rate": 0.5, "sizes": [1, 2, 3], "pair": (4, 5), "none": None},
            "ok": True,
            "nested": {"deeper": {"list_of_dicts": [{"a": 1.5}, {"b": -2}]}},
        },
    ),
    Heartbeat({"time": 1712345678.25, "running": 0, "queue": {"waiting": 2, "gauges": [0.1]}}),
    Heartbeat({}),
    BatchOutputs([OUT_FIRST, OUT_LAST, OUT_ABORT]),
    BatchOutputs([]),
    BatchTextOutputs([OUT_FIRST, OUT_LAST], [" there was", ""]),
    BatchTextOutputs([], []),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_roundtrip_is_exact(msg: Any) -> None:
    out = roundtrip(msg)
    assert out == msg
    assert out is not msg


def test_samples_cover_every_registered_type() -> None:
    seen: set[type] = set()

    def walk(x: Any) -> None:
        if dataclasses.is_dataclass(x):
            seen.add(type(x))
            for f in dataclasses.fields(x):
                walk(getattr(x, f.name))
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(MESSAGES)
    assert seen == set(codec._TYPES)
    assert len(codec._TYPES) == 17


def test_every_message_dataclass_is_registered() -> None:
    defined = {
        obj
        for mod in (io_struct, sched_io)
        for obj in vars(mod).values()
        if isinstance(obj, type) and dataclasses.is_dataclass(obj)
    }
    assert defined - set(codec._TYPES) == set()


def test_plain_data_types_survive() -> None:
    out = roundtrip(OUT_FIRST)
    assert type(out.output_top_logprobs[1][0]) is tuple
    assert out.output_top_logprobs[1] == [(-2.0, 383), (-2.5, 11)]
    assert out.input_top_logprobs[0] is None
    assert out.detok_init.sampling.stop == ("\n\n", "The end", "é日本")
    assert out.detok_init.sampling.logit_bias == {5: -100.0, 300: 2.5, 0: 0.0}
    assert all(type(k) is int for k in out.detok_init.sampling.logit_bias)
    assert out.detok_init.sampling.sampling_seed == 1234
    assert out.finished is False
    assert roundtrip(OUT_LAST).finished_reason == {"type": "stop", "matched": 2}
    assert type(roundtrip(ControlReply("x", True)).ok) is bool


def test_large_and_special_numbers() -> None:
    msg = Heartbeat({"big": 2**80, "neg": -(2**63), "inf": math.inf, "nan": math.nan, "z": -0.0})
    out = roundtrip(msg)  # typed() compares floats by repr: nan and -0.0 included
    assert out.stats["big"] == 2**80
    assert math.isnan(out.stats["nan"])


def test_unregistered_dataclass_is_rejected() -> None:
    @dataclasses.dataclass
    class Foreign:
        x: int = 1

    with pytest.raises(CodecError, match="Foreign is not a registered message type"):
        encode(Foreign())
    with pytest.raises(CodecError):  # nested in a list
        encode(BatchOutputs([OUT_LAST, Foreign()]))
    with pytest.raises(CodecError):  # nested in a dict: marshal refuses it
        encode(Heartbeat({"x": Foreign()}))
    with pytest.raises(CodecError):
        encode(ControlReply("stats", True, {"obj": object()}))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"\xff\x00\x01",
        encode(OUT_FIRST)[:-3],
        encode(OUT_FIRST)[:7],
        marshal.dumps(5),  # not a (version, body) pair
        marshal.dumps((1, 2, 3)),
        "not bytes",
    ],
    ids=["empty", "garbage", "bad-type-code", "truncated", "head", "int", "triple", "str"],
)
def test_garbage_is_rejected(data: Any) -> None:
    with pytest.raises(CodecError, match="malformed message"):
        decode(data)


def test_wrong_version_is_rejected() -> None:
    body = marshal.loads(encode(AbortRequest("r")))[1]
    with pytest.raises(CodecError, match="version 2 != 1"):
        decode(marshal.dumps((2, body)))
    assert decode(marshal.dumps((1, body))) == AbortRequest("r")


def test_unknown_tag_is_rejected() -> None:
    with pytest.raises(CodecError, match="unknown message type 'Evil'"):
        decode(marshal.dumps((1, (MARK, "Evil", ("r", "m")))))
    with pytest.raises(CodecError, match="unknown message type"):  # nested in a list
        decode(marshal.dumps((1, [(MARK, "AbortRequest", ("r", "m")), (MARK, "Evil", ())])))


def test_wrong_field_count_is_rejected() -> None:
    with pytest.raises(CodecError, match="AbortRequest has 1 fields, expected 2"):
        decode(marshal.dumps((1, (MARK, "AbortRequest", ("r",)))))
    with pytest.raises(CodecError, match="AbortRequest has 3 fields, expected 2"):
        decode(marshal.dumps((1, (MARK, "AbortRequest", ("r", "m", "x")))))
    # A nested message (the SamplingParams inside a DetokInit) is checked as well.
    with pytest.raises(CodecError, match="SamplingParams has 0 fields"):
        decode(marshal.dumps((1, (MARK, "DetokInit", ([], (MARK, "SamplingParams", ()))))))


@pytest.mark.parametrize(
    "body",
    [
        (MARK, "ReqOutput", 5),  # fields not a tuple
        (MARK, "AbortRequest", ["r", "m"]),  # fields as a list
        (MARK, ["AbortRequest"], ("r", "m")),  # unhashable tag
        (MARK, 7, ("r", "m")),  # tag not a string
    ],
    ids=["int-fields", "list-fields", "list-tag", "int-tag"],
)
def test_malformed_body_is_rejected(body: Any) -> None:
    with pytest.raises(CodecError):
        decode(marshal.dumps((1, body)))


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
token = st.integers(min_value=0, max_value=2**31 - 1)
top = st.lists(st.tuples(finite, token), max_size=4)


@st.composite
def req_outputs(draw: Any) -> ReqOutput:
    n = draw(st.integers(0, 6))
    lp = draw(st.booleans())
    return ReqOutput(
        rid=draw(st.text(max_size=12)),
        new_token_ids=draw(st.lists(token, min_size=n, max_size=n)),
        finished_reason=draw(
            st.one_of(
                st.none(),
                st.fixed_dictionaries(
                    {"type": st.just("stop"), "matched": st.one_of(token, st.text(max_size=5))}
                ),
                st.fixed_dictionaries({"type": st.just("length"), "length": token}),
            )
        ),
        prompt_tokens=draw(token),
        completion_tokens=draw(token),
        cached_tokens=draw(token),
        input_token_logprobs=draw(st.none() | st.lists(st.none() | any_float, max_size=5)),
        input_top_logprobs=draw(st.none() | st.lists(st.none() | top, max_size=5)),
        output_token_logprobs=draw(st.lists(any_float, min_size=n, max_size=n)) if lp else [],
        output_top_logprobs=draw(st.lists(top, min_size=n, max_size=n)) if lp else [],
        num_retractions=draw(st.integers(0, 3)),
        queue_time=draw(st.none() | finite),
        detok_init=draw(
            st.none()
            | st.builds(
                DetokInit,
                prompt_tail=st.lists(token, max_size=8),
                sampling=st.builds(
                    SamplingParams,
                    stop=st.lists(st.text(min_size=1, max_size=4), max_size=3).map(tuple),
                    logit_bias=st.dictionaries(token, finite, max_size=3),
                    sampling_seed=st.none() | st.integers(-(2**63), 2**63),
                ),
            )
        ),
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(req_outputs(), min_size=1, max_size=3), st.booleans())
def test_req_output_roundtrip_property(outputs: list[ReqOutput], with_text: bool) -> None:
    for out in outputs:
        roundtrip(out)
    if with_text:
        roundtrip(BatchTextOutputs(outputs, [o.rid for o in outputs]))
    else:
        roundtrip(BatchOutputs(outputs))
