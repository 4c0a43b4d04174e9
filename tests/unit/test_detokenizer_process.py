"""``render`` of the detokenizer process, with the bundled tokenizer and no process or socket.

Proves: for interleaved requests (each first output carrying its ``DetokInit``) the text deltas
concatenate, per request, to the stop-trimmed output text, also after the batch went through
the wire codec; a request's state is dropped when it finishes; an output for an unknown
request without ``DetokInit`` still renders (default sampling, no prompt context); the LRU cap
``MAX_STATES`` evicts the least recently used state; without a tokenizer every delta is empty.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest

from radixlm.config import BUNDLED_MODEL
from radixlm.sampling_params import SamplingParams
from radixlm.scheduler.io import DetokInit, ReqOutput
from radixlm.server import codec, detokenizer_process
from radixlm.server.detokenizer_process import render
from radixlm.server.io_struct import BatchOutputs, BatchTextOutputs
from radixlm.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok() -> Any:
    return load_tokenizer(BUNDLED_MODEL)


def out(
    rid: str,
    ids: list[int],
    finish: dict[str, Any] | None = None,
    init: DetokInit | None = None,
) -> ReqOutput:
    return ReqOutput(
        rid=rid,
        new_token_ids=ids,
        finished_reason=finish,
        prompt_tokens=0,
        completion_tokens=0,
        cached_tokens=0,
        detok_init=init,
    )


def split(tok: Any, prompt: str, text: str) -> tuple[list[int], list[int]]:
    ids = tok.encode(prompt + text)
    n = len(tok.encode(prompt))
    return ids[:n], ids[n:]


def test_interleaved_requests(tok: Any) -> None:
    # A: " there was a girl who was happy." (12 tokens), plain, ends by length.
    # B: " Lily saw a big dog." with stop "dog", ends on the stop string.
    pa, oa = split(tok, "Once upon a time,", " there was a girl who was happy.")
    pb, ob = split(tok, "One day", " Lily saw a big dog. The dog")
    assert len(oa) == 12 and len(ob) == 10
    sb = SamplingParams(stop=("dog",))
    init_a = DetokInit(pa[-4:], SamplingParams())
    init_b = DetokInit(pb, sb)
    batches = [
        [out("a", oa[:3], init=init_a), out("b", ob[:2], init=init_b)],
        [out("b", ob[2:4]), out("a", oa[3:6])],
        [out("a", oa[6:9]), out("b", ob[4:6], {"type": "stop", "matched": "dog"})],
        [out("a", oa[9:], {"type": "length", "length": 12})],
    ]
    states: OrderedDict = OrderedDict()
    texts: dict[str, list[str]] = {"a": [], "b": []}
    live = []
    for outputs in batches:
        msg = codec.decode(codec.encode(BatchOutputs(outputs)))  # as it crosses the socket
        res = render(msg, tok, states)
        assert type(res) is BatchTextOutputs
        assert res.outputs is msg.outputs
        assert len(res.text_deltas) == len(outputs)
        for o, d in zip(res.outputs, res.text_deltas):
            texts[o.rid].append(d)
        live.append(list(states))
    assert texts["a"] == [" there was a", " girl", " who", " was happy."]
    assert texts["b"] == [" Lily s", "aw a b", "ig "]  # 2 held back; "dog" cut, never shown
    assert "".join(texts["a"]) == " there was a girl who was happy."
    assert "".join(texts["b"]) == " Lily saw a big "
    assert live == [["a", "b"], ["b", "a"], ["a"], []]


def test_stop_string_held_back_across_batches(tok: Any) -> None:
    p, o = split(tok, "One day", " Lily saw a big dog.")
    init = DetokInit(p, SamplingParams(stop=("big dog",)))
    states: OrderedDict = OrderedDict()
    d1 = render(BatchOutputs([out("r", o[:3], init=init)]), tok, states).text_deltas
    d2 = render(BatchOutputs([out("r", o[3:5])]), tok, states).text_deltas
    assert d1 == [" Lily"]  # " Lily saw a": 6 characters held back ("big dog" is 7 long)
    assert d2 == [" saw a "]  # " Lily saw a big do": "big do" held back
    assert list(states) == ["r"]
    d3 = render(
        BatchOutputs([out("r", o[5:6], {"type": "stop", "matched": "big dog"})]), tok, states
    )
    assert d3.text_deltas == [""]
    assert list(states) == []


def test_unknown_request_without_init_still_renders(tok: Any) -> None:
    _, o = split(tok, "", " Once upon a time")
    states: OrderedDict = OrderedDict()
    res = render(BatchOutputs([out("ghost", o[:2])]), tok, states)
    # No prompt context: SentencePiece drops the first word's leading space.
    assert res.text_deltas == ["Once upon"]
    assert list(states) == ["ghost"]
    assert states["ghost"].sampling == SamplingParams()
    res = render(BatchOutputs([out("ghost", o[2:], {"type": "length", "length": 4})]), tok, states)
    assert res.text_deltas == [" a time"]
    assert list(states) == []
    # A finished output for an unknown request: rendered and not kept.
    res = render(BatchOutputs([out("late", o[:1], {"type": "abort", "message": "x"})]), tok, states)
    assert res.text_deltas == ["Once"]
    assert list(states) == []


def test_empty_output_gives_empty_delta(tok: Any) -> None:
    states: OrderedDict = OrderedDict()
    init = DetokInit([1], SamplingParams())
    res = render(BatchOutputs([out("r", [], init=init)]), tok, states)
    assert res.text_deltas == [""]
    assert list(states) == ["r"]


def test_lru_cap_evicts_least_recently_used(tok: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detokenizer_process, "MAX_STATES", 2)
    _, o = split(tok, "", " Once upon a time")
    init = DetokInit([1], SamplingParams(stop=("zz",)))
    states: OrderedDict = OrderedDict()
    render(BatchOutputs([out("a", o[:1], init=init), out("b", o[:1], init=init)]), tok, states)
    assert list(states) == ["a", "b"]
    render(BatchOutputs([out("a", o[1:2])]), tok, states)  # "a" used: "b" is now the oldest
    assert list(states) == ["b", "a"]
    render(BatchOutputs([out("c", o[:1], init=init)]), tok, states)
    assert list(states) == ["a", "c"]
    assert states["a"].text == "Once upon"  # after BOS: no leading space
    # The evicted request comes back without its DetokInit: it renders from scratch.
    res = render(BatchOutputs([out("b", o[1:2])]), tok, states)
    assert res.text_deltas == ["upon"]
    assert list(states) == ["c", "b"]


def test_no_tokenizer_gives_empty_deltas() -> None:
    init = DetokInit([1, 2], SamplingParams(stop=("x",)))
    outputs = [out("a", [5, 6], init=init), out("b", [7], {"type": "length", "length": 1})]
    states: OrderedDict = OrderedDict()
    res = render(BatchOutputs(outputs), None, states)
    assert res.text_deltas == ["", ""]
    assert res.outputs is outputs
    assert list(states) == []
