"""Overlap scheduling (batch N+1 built while N runs) must not change what requests produce.

Every case runs the same workload with ``disable_overlap_schedule`` on and off and compares the
results exactly: greedy tokens, seeded samples, penalties (their counts are updated on the
forward thread), logprobs, stop handling, retraction and chunked prefill under pressure.
"""

from __future__ import annotations

import pytest

PROMPTS = [
    "Once upon a time",
    "Lily and Tom went to the park",
    "The little dog was sad because",
    "One day, a girl named Sue",
    "Tim had a big red ball. He",
    "The sun was shining and the birds",
]


def _both(make_engine, call, **options):
    on = make_engine(enable_overlap_schedule=True, **options)
    off = make_engine(disable_overlap_schedule=True, **options)
    return call(on), call(off)


def _strip(results):
    """Everything but timings."""
    out = []
    for r in results:
        meta = {k: v for k, v in r["meta_info"].items() if k not in ("e2e_latency", "id")}
        out.append((r["text"], r["output_ids"], meta))
    return out


def test_greedy_mixed_lengths_and_stops_identical(make_engine):
    # Requests finish at different steps (1 token, stop string, EOS, length), so batches keep
    # changing shape while the next one is already built.
    params = [
        {"temperature": 0, "max_new_tokens": n, **extra}
        for n, extra in [(1, {}), (40, {"stop": ["."]}), (64, {}), (3, {}), (50, {}), (17, {})]
    ]
    on, off = _both(make_engine, lambda e: e.generate(PROMPTS, params))
    assert _strip(on) == _strip(off)


def test_seeded_sampling_and_penalties_identical(make_engine):
    params = {
        "temperature": 0.9,
        "top_p": 0.9,
        "sampling_seed": 7,
        "frequency_penalty": 0.8,
        "presence_penalty": 0.5,
        "repetition_penalty": 1.3,
        "max_new_tokens": 40,
        "n": 2,
    }
    on, off = _both(make_engine, lambda e: e.generate(PROMPTS[:3], params))
    assert _strip(on) == _strip(off)


def test_logprobs_identical(make_engine):
    def call(e):
        return e.generate(
            PROMPTS,
            {"temperature": 0, "max_new_tokens": 12},
            return_logprob=True,
            logprob_start_len=0,
            top_logprobs_num=3,
        )

    on, off = _both(make_engine, call)
    for a, b in zip(on, off):
        assert a["output_ids"] == b["output_ids"]
        for key in ("input_token_logprobs", "output_token_logprobs"):
            got, want = a["meta_info"][key], b["meta_info"][key]
            assert [t[1] for t in got] == [t[1] for t in want]
            for x, y in zip(got, want):
                assert (x[0] is None and y[0] is None) or abs(x[0] - y[0]) < 1e-5


@pytest.mark.parametrize("options", [{"chunked_prefill_size": 3}, {"max_total_tokens": 90}])
def test_pressure_identical(make_engine, options):
    params = {"temperature": 0, "max_new_tokens": 48, "ignore_eos": True}
    on, off = _both(make_engine, lambda e: e.generate(PROMPTS * 2, params), **options)
    assert [r["output_ids"] for r in on] == [r["output_ids"] for r in off]


def test_streams_and_aborts_leave_no_leak(make_engine):
    engine = make_engine(enable_overlap_schedule=True)
    params = {"temperature": 0, "max_new_tokens": 60, "ignore_eos": True}
    full = engine.generate(PROMPTS, params)
    stream = engine.generate(PROMPTS, params, stream=True)
    seen = 0
    for _chunk in stream:
        seen += 1
        if seen == 25:
            break  # closing the stream aborts the unfinished requests mid-flight
    stream.close()
    again = engine.generate(PROMPTS, params)
    assert [r["output_ids"] for r in again] == [r["output_ids"] for r in full]
    # make_engine checks that every slot and row is free or cached afterwards.


def test_sync_hook_keeps_results(make_engine, monkeypatch):
    """A batch flagged ``needs_sync`` (delayed sampling, e.g. grammar masks) is submitted only
    after the previous result is processed; results are unchanged."""
    from radixlm.scheduler.scheduler import Scheduler

    original = Scheduler._schedule

    def flagged(self):
        batch = original(self)
        if batch is not None:
            assert self._in_flight is None or self._in_flight[0] is not batch
            batch.needs_sync = True
        return batch

    params = {"temperature": 0, "max_new_tokens": 20}
    baseline = make_engine(disable_overlap_schedule=True).generate(PROMPTS, params)
    monkeypatch.setattr(Scheduler, "_schedule", flagged)
    engine = make_engine(enable_overlap_schedule=True)
    drained = []
    original_drain = Scheduler.drain

    def spy(self):
        drained.append(self._in_flight is not None)
        original_drain(self)

    monkeypatch.setattr(Scheduler, "drain", spy)
    assert _strip(engine.generate(PROMPTS, params)) == _strip(baseline)
    assert any(drained)
