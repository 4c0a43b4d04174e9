"""The SGLang-native HTTP contract (sglang_api.md §2, §2.8) against a real server process."""

from __future__ import annotations

import threading

import pytest

from tests.server.conftest import raw_post

GREEDY = {"temperature": 0, "max_new_tokens": 24}
PROMPTS = ["Once upon a time", "Lily and Tom went to the park", "The little dog was sad"]


def test_single_matches_engine(server, engine):
    out = server.generate({"text": PROMPTS[0], "sampling_params": GREEDY})
    ref = engine.generate(PROMPTS[0], GREEDY)
    assert out["text"] == ref["text"] and out["output_ids"] == ref["output_ids"]
    meta = out["meta_info"]
    assert meta["prompt_tokens"] == ref["meta_info"]["prompt_tokens"]
    assert meta["completion_tokens"] == len(out["output_ids"])
    assert meta["finish_reason"] == ref["meta_info"]["finish_reason"]
    assert meta["e2e_latency"] > 0


def test_batch_text_and_ids_return_lists(server, engine):
    outs = server.generate({"text": PROMPTS, "sampling_params": GREEDY})
    assert isinstance(outs, list) and len(outs) == 3
    assert [o["output_ids"] for o in outs] == [
        r["output_ids"] for r in engine.generate(PROMPTS, GREEDY)
    ]
    ids = [engine.tokenizer.encode(p) for p in PROMPTS]
    by_ids = server.generate({"input_ids": ids, "sampling_params": GREEDY})
    assert [o["output_ids"] for o in by_ids] == [o["output_ids"] for o in outs]


def test_null_sampling_fields_mean_default(server):
    sp = {"max_new_tokens": 8, "temperature": 0, "top_p": None, "top_k": None, "stop": None,
          "regex": None, "json_schema": None, "stop_token_ids": None, "min_p": None}  # fmt: skip
    out = server.generate({"text": PROMPTS[0], "sampling_params": sp})
    assert out["meta_info"]["completion_tokens"] == 8


def test_prompt_logprobs_and_scoring(server, engine):
    body = {
        "text": PROMPTS[1],
        "sampling_params": {"max_new_tokens": 0},
        "return_logprob": True,
        "logprob_start_len": 0,
        "return_text_in_logprobs": True,
    }
    out = server.generate(body)
    meta = out["meta_info"]
    ids = engine.tokenizer.encode(PROMPTS[1])
    assert out["output_ids"] == [] and meta["completion_tokens"] == 0
    assert meta["prompt_tokens"] == len(ids)
    lps = meta["input_token_logprobs"]
    assert [t[1] for t in lps] == ids
    assert lps[0][0] is None and all(isinstance(t[0], float) for t in lps[1:])
    assert all(isinstance(t[2], str) for t in lps)
    ref = engine.generate(
        PROMPTS[1], {"max_new_tokens": 0}, return_logprob=True, logprob_start_len=0
    )["meta_info"]["input_token_logprobs"]
    for (a, _, _), (b, _, _) in zip(lps[1:], ref[1:]):
        assert abs(a - b) < 1e-4


def test_output_logprobs_with_top(server):
    out = server.generate(
        {
            "text": PROMPTS[0],
            "sampling_params": GREEDY,
            "return_logprob": True,
            "top_logprobs_num": 3,
        }
    )
    meta = out["meta_info"]
    assert [t[1] for t in meta["output_token_logprobs"]] == out["output_ids"]
    for chosen, tops in zip(meta["output_token_logprobs"], meta["output_top_logprobs"]):
        assert len(tops) == 3 and tops[0][1] == chosen[1]  # greedy picks the top token


def test_streaming_is_cumulative_and_ends_with_done(server):
    body = {"text": PROMPTS[0], "sampling_params": GREEDY}
    full = server.generate(body)
    events = server.stream(body)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len(chunks) > 2
    texts = [c["text"] for c in chunks]
    assert all(texts[i + 1].startswith(texts[i]) for i in range(len(texts) - 1))
    assert texts[-1] == full["text"] and chunks[-1]["output_ids"] == full["output_ids"]
    assert chunks[-1]["meta_info"]["finish_reason"] is not None


def test_batch_stream_chunks_carry_index(server):
    events = server.stream({"text": PROMPTS[:2], "sampling_params": GREEDY})
    assert events[-1] == "[DONE]"
    assert {c["index"] for c in events[:-1]} == {0, 1}


def test_n_samples(server):
    sp = {"temperature": 0.8, "max_new_tokens": 10, "n": 3, "sampling_seed": 1}
    outs = server.generate({"text": PROMPTS[0], "sampling_params": sp})
    assert len(outs) == 3 and len({tuple(o["output_ids"]) for o in outs}) > 1


def test_info_endpoints(server):
    status, info = server.get("/get_model_info")
    assert status == 200 and info["is_generation"] is True and "model_path" in info
    status, info = server.get("/get_server_info")
    assert status == 200
    assert info["max_total_num_tokens"] == 20000 and info["port"] == server.port
    assert (
        "prefix_cache" in info["scheduler"] and info["internal_states"][0]["forward_seconds"] >= 0
    )
    assert server.get("/health_generate")[0] == 200
    assert server.get("/metrics")[0] == 404  # off unless --enable-metrics
    status, models = server.get("/v1/models")
    assert status == 200 and models["data"][0]["id"] == "stories260K"


def test_flush_cache_when_idle(server):
    server.generate({"text": PROMPTS[2], "sampling_params": GREEDY})
    server.wait_idle()
    assert server.post("/flush_cache", {"empty_cache": True})[0] == 200
    assert server.scheduler_stats()["prefix_cache"]["tree_tokens"] == 0


def test_flush_cache_refused_while_busy(server):
    body = {"text": PROMPTS[0], "sampling_params": {"max_new_tokens": 450, "ignore_eos": True}}
    t = threading.Thread(target=server.generate, args=(body,))
    t.start()
    while server.scheduler_stats()["num_running_reqs"] == 0 and t.is_alive():
        threading.Event().wait(0.01)
    status, text = server.post("/flush_cache")
    t.join(60)
    assert status == 400 and "requests are running" in text


def test_abort_request(server):
    body = {
        "text": PROMPTS[0],
        "rid": "to-abort",
        "sampling_params": {"max_new_tokens": 400, "ignore_eos": True, "temperature": 0},
    }
    result: list = []
    t = threading.Thread(target=lambda: result.append(server.generate(body)))
    t.start()
    for _ in range(100):
        status, out = server.post("/abort_request", {"rid": "to-abort"})
        assert status == 200, out
        if out["aborted"]:
            break
        threading.Event().wait(0.02)
    t.join(60)
    assert result[0]["meta_info"]["finish_reason"]["type"] == "abort"
    assert result[0]["meta_info"]["completion_tokens"] < 400
    server.wait_idle()


BAD_BODIES = [
    ({"text": "hi", "input_ids": [1, 2]}, "exactly one"),
    ({"text": ""}, "empty"),
    ({"text": 5}, "text"),
    ({"input_ids": [1, -3]}, "vocabulary"),
    ({"text": "hi", "sampling_params": {"temperature": -1}}, "temperature"),
    ({"text": "hi", "sampling_params": {"top_p": 2}}, "top_p"),
    ({"text": "hi", "sampling_params": {"max_new_tokens": "many"}}, "max_new_tokens"),
    ({"text": "hi", "sampling_params": {"bogus": 1}}, "bogus"),
    ({"text": "hi", "bogus_field": 1}, "bogus_field"),
    ({"text": "hi", "stream": "yes"}, "stream"),
    ({"text": "hi", "sampling_params": {"regex": "a(("}}, "regex"),
    ({"text": "hi", "sampling_params": {"json_schema": "{not json"}}, "schema"),
    ({"text": "hi", "sampling_params": {"ebnf": "root ::= 'a'"}}, "ebnf"),
    ({"text": "hi", "image_data": "abc"}, "image_data"),
    ({"input_ids": [3] * 600}, "context length"),
    ([1, 2, 3], "JSON object"),
]


@pytest.mark.parametrize("body,needle", BAD_BODIES)
def test_bad_input_is_a_400_with_a_message(server, body, needle):
    status, out = server.post("/generate", body)
    assert status == 400, out
    assert needle in out["error"]["message"]


def test_malformed_json_and_server_keeps_serving(server):
    status, out = server.request("POST", "/generate", raw=b"{not json")
    assert status == 400 and "JSON" in out["error"]["message"]
    assert (
        server.generate({"text": "Lily", "sampling_params": GREEDY})["meta_info"][
            "completion_tokens"
        ]
        > 0
    )


def _concurrent(server, bodies):
    results = [None] * len(bodies)

    def run(i):
        results[i] = server.generate(bodies[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results


def test_64_concurrent_equal_sequential(server):
    bodies = [
        {
            "text": f"{PROMPTS[i % 3]} {i}",
            "sampling_params": {"temperature": 0, "max_new_tokens": 16},
        }
        for i in range(64)
    ]
    sequential = [server.generate(b)["output_ids"] for b in bodies[:16]]
    concurrent = _concurrent(server, bodies)
    assert [r["output_ids"] for r in concurrent[:16]] == sequential
    assert all(r["meta_info"]["completion_tokens"] > 0 for r in concurrent)


def test_overlap_equals_no_overlap(server, start_server):
    plain = start_server("--enable-overlap-schedule")  # the default server does not overlap on CPU
    body = {"text": PROMPTS + [p + " again" for p in PROMPTS],
            "sampling_params": {"temperature": 0, "max_new_tokens": 40}}  # fmt: skip
    assert [o["output_ids"] for o in server.generate(body)] == [
        o["output_ids"] for o in plain.generate(body)
    ]


def _cut_stream(url_port: int, body: dict, read_bytes: int) -> None:
    """Open a streaming request, read a little, then drop the connection."""
    s = raw_post(url_port, "/generate", {**body, "stream": True})
    got = b""
    while len(got) < read_bytes:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    s.close()


def test_100_cut_streams_leak_nothing(server):
    server.wait_idle()
    body = {"text": PROMPTS[0], "sampling_params": {"max_new_tokens": 300, "ignore_eos": True}}
    threads = [
        threading.Thread(target=_cut_stream, args=(server.port, body, 600)) for _ in range(100)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stats = server.wait_idle(timeout=60)
    total = server.get("/get_server_info")[1]["max_total_num_tokens"]
    pc = stats["prefix_cache"]
    # Every slot is free or held (evictably) by the prefix cache: no request kept any.
    assert stats["free_kv_tokens"] + pc["evictable_tokens"] == total
    assert pc["protected_tokens"] == 0
    assert stats["num_finished_requests"] >= 100
