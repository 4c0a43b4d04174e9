"""Continuous batching under pressure: chunked prefill, tiny KV pools (retraction), request limits,
aborts. Every configuration must reproduce the roomy run's outputs exactly."""

from __future__ import annotations

import pytest

from tests.engine.conftest import assert_input_logprobs, hf_logprobs

STORY_PROMPTS = [
    "Once upon a time",
    "Lily and Tom went to the park",
    "The little dog was sad because",
    "One day, a girl named Sue",
    "Tim had a big red ball. He",
    "The sun was shining and the birds",
    "Mom said it was time for bed, but",
    "There was a small cat who liked to",
    "Ben wanted to go to the store",
    "The old tree in the garden",
    "Anna found a shiny stone",
    "A bird sat on the window",
]
GREEDY = {"temperature": 0, "max_new_tokens": 60, "ignore_eos": True}


@pytest.fixture(scope="module")
def roomy_outputs():
    import radixlm

    with radixlm.Engine() as e:
        return [r["output_ids"] for r in e.generate(STORY_PROMPTS, GREEDY)]


def _workload_tokens(engine) -> int:
    return sum(len(engine.tokenizer.encode(p)) + GREEDY["max_new_tokens"] for p in STORY_PROMPTS)


def test_chunked_prefill_tiny_chunk_matches(roomy_outputs, make_engine):
    engine = make_engine(chunked_prefill_size=3)
    results = engine.generate(STORY_PROMPTS, GREEDY)
    assert [r["output_ids"] for r in results] == roomy_outputs


@pytest.mark.parametrize("overlap", [True, False])
def test_tiny_kv_pool_retracts_and_matches(roomy_outputs, make_engine, overlap):
    probe = make_engine(max_total_tokens=4096)
    budget = _workload_tokens(probe) // 10  # ~10 % of what the workload needs
    # A low conservativeness admits optimistically, so decoding must run out of room.
    engine = make_engine(
        max_total_tokens=budget,
        schedule_conservativeness=0.05,
        enable_overlap_schedule=overlap,
        disable_overlap_schedule=not overlap,
    )
    results = engine.generate(STORY_PROMPTS, GREEDY)
    assert [r["output_ids"] for r in results] == roomy_outputs
    assert engine.scheduler.stats.num_retractions > 0, "the pool was meant to be too small"
    assert sum(r["meta_info"].get("completion_tokens") for r in results) == 60 * len(STORY_PROMPTS)


def test_tiny_pool_with_chunking_and_request_limit(roomy_outputs, make_engine):
    engine = make_engine(max_total_tokens=90, chunked_prefill_size=4, max_running_requests=3)
    results = engine.generate(STORY_PROMPTS, GREEDY)
    assert [r["output_ids"] for r in results] == roomy_outputs


@pytest.mark.parametrize("policy", ["fcfs", "lof", "random", "lpm", "dfs-weight"])
def test_policies_same_outputs(policy, roomy_outputs, make_engine):
    engine = make_engine(schedule_policy=policy, max_running_requests=4, max_prefill_tokens=16)
    results = engine.generate(STORY_PROMPTS, GREEDY)
    assert [r["output_ids"] for r in results] == roomy_outputs


def test_prompt_longer_than_pool_share_is_chunked(tiny_models, random_prompts, make_engine):
    """Input logprobs survive chunking: same values as an unchunked run."""
    path = tiny_models["qwen2"]
    ids = random_prompts[-1]
    ref = hf_logprobs(path, ids)
    engine = make_engine(path, chunked_prefill_size=7)
    r = engine.generate(
        input_ids=ids,
        sampling_params={"max_new_tokens": 1, "temperature": 0},
        return_logprob=True,
        logprob_start_len=3,
    )
    assert_input_logprobs(r["meta_info"]["input_token_logprobs"], ids, ref, 3)


def test_abort_running_request_in_stream(make_engine):
    engine = make_engine()
    stream = engine.generate(
        ["Once upon a time", "The little dog"],
        {"temperature": 0, "max_new_tokens": 100, "ignore_eos": True},
        stream=True,
        rid=["a", "b"],
    )
    finals = {}
    for chunk in stream:
        if chunk["meta_info"]["id"] == "a" and chunk["meta_info"]["completion_tokens"] == 5:
            engine.abort_request("a")
        if chunk["meta_info"]["finish_reason"] is not None:
            finals[chunk["meta_info"]["id"]] = chunk
    assert finals["a"]["meta_info"]["finish_reason"]["type"] == "abort"
    assert 5 <= finals["a"]["meta_info"]["completion_tokens"] <= 6
    assert finals["b"]["meta_info"]["finish_reason"] == {"type": "length", "length": 100}


def test_abandoned_stream_is_aborted_and_freed(make_engine):
    engine = make_engine()
    stream = engine.generate("Once upon a time", {"max_new_tokens": 50}, stream=True)
    next(stream)
    stream.close()
    assert engine.scheduler.num_live == 0
    # the engine keeps serving
    assert engine.generate("Lily", {"max_new_tokens": 3})["meta_info"]["completion_tokens"] == 3


def test_abort_waiting_request(make_engine):
    engine = make_engine(max_running_requests=1)
    stream = engine.generate(
        ["Once upon a time", "The little dog"], {"max_new_tokens": 20}, stream=True, rid=["x", "y"]
    )
    engine.abort_request("y")  # still waiting: never admitted
    finals = {c["meta_info"]["id"]: c for c in stream if c["meta_info"]["finish_reason"]}
    assert finals["y"]["meta_info"]["finish_reason"]["type"] == "abort"
    assert finals["y"]["output_ids"] == []
    assert finals["x"]["meta_info"]["finish_reason"]["type"] in ("length", "stop")


def test_group_abort_leaves_queue_in_one_step(make_engine):
    """AbortRequests (the n samples of a call whose client left): every one, running or
    waiting, finishes "abort" at the next step, and the KV is back to idle."""
    from radixlm.sampling_params import SamplingParams
    from radixlm.scheduler.io import AbortRequests, TokenizedRequest

    engine = make_engine(max_running_requests=2)
    sched = engine.scheduler
    sp = SamplingParams.from_dict({"max_new_tokens": 50, "ignore_eos": True})
    rids = [f"g_{k}" for k in range(12)]
    sched.add_requests([TokenizedRequest(r, [1, 2, 3, 4 + k], sp) for k, r in enumerate(rids)])
    sched.step()
    sched.step()
    assert len(sched.running) == 2 and len(sched.waiting) == 10
    sched.abort_request(AbortRequests(rids, "client went away"))
    outputs = sched.step()
    aborted = {o.rid for o in outputs if (o.finished_reason or {}).get("type") == "abort"}
    assert aborted == set(rids)
    assert not sched.waiting and not sched.running and not sched.reqs
    assert not sched.has_runnable_work()


def test_streaming_text_is_cumulative_and_ends_at_final(make_engine):
    engine = make_engine()
    params = {"temperature": 0, "max_new_tokens": 30, "stop": ["park"]}
    final = engine.generate("Lily and Tom went to the", params)
    texts = [c["text"] for c in engine.generate("Lily and Tom went to the", params, stream=True)]
    for a, b in zip(texts, texts[1:]):
        assert b.startswith(a)
    assert texts[-1] == final["text"]


def test_max_new_tokens_zero_is_prefill_only(make_engine):
    engine = make_engine()
    r = engine.generate(
        "Once upon a time", {"max_new_tokens": 0}, return_logprob=True, logprob_start_len=0
    )
    assert r["output_ids"] == [] and r["text"] == ""
    assert r["meta_info"]["finish_reason"] == {"type": "length", "length": 0}
    lps = r["meta_info"]["input_token_logprobs"]
    assert len(lps) == r["meta_info"]["prompt_tokens"] and lps[0][0] is None
    assert all(lp[0] < 0 for lp in lps[1:])


def test_flush_cache_refused_while_busy(make_engine):
    engine = make_engine()
    stream = engine.generate("Once upon a time", {"max_new_tokens": 5}, stream=True)
    next(stream)
    assert engine.flush_cache() is False
    list(stream)
    assert engine.flush_cache() is True


def test_stream_interleaved_with_another_call_loses_no_chunk(make_engine):
    engine = make_engine()
    params = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}
    stream = engine.generate("Once upon a time", params, stream=True)
    first = next(stream)
    engine.generate("The little dog", {"max_new_tokens": 20})  # steps the stream's request too
    rest = list(stream)
    final = (rest or [first])[-1]
    assert final["meta_info"]["finish_reason"] == {"type": "length", "length": 12}
    assert final["output_ids"] == engine.generate("Once upon a time", params)["output_ids"]
