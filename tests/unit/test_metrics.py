"""``ServerMetrics`` on prometheus_client: the hooks end to end, read back with
prometheus_client's own parser; SGLang's names under ``--metrics-compat sglang``; process
metrics for every server process."""

from __future__ import annotations

import os

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from radixlm.server.metrics import (
    CONTENT_TYPE,
    INTER_TOKEN_BUCKETS,
    LATENCY_BUCKETS,
    ServerMetrics,
)


def parse_exposition(text: bytes | str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} through prometheus_client's parser (which rejects
    malformed exposition text); ``*_created`` timestamps are left out."""
    if isinstance(text, bytes):
        text = text.decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def test_bucket_lists_span_1ms_to_10min():
    assert LATENCY_BUCKETS[0] == 0.001 and LATENCY_BUCKETS[-1] == 600
    assert INTER_TOKEN_BUCKETS[0] == 0.001
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS))
    assert list(INTER_TOKEN_BUCKETS) == sorted(set(INTER_TOKEN_BUCKETS))


def test_server_metrics_scenario():
    assert CONTENT_TYPE.startswith("text/plain; version=")
    m = ServerMetrics('llama "3"')
    model = frozenset({("model_name", 'llama "3"')})

    # Before any traffic every series exists at zero.
    s = parse_exposition(m.render())
    assert s[("radixlm:num_requests_total", model)] == 0
    assert s[("radixlm:time_to_first_token_seconds_count", model)] == 0

    # Request 1: 10 prompt tokens (4 cached), 5 output tokens streamed as 1 + 2 + 2.
    m.on_first_token(0.05)
    m.on_tokens(0.04, 2)
    m.on_tokens(0.02, 2)
    m.on_request_finished(10, 5, 4, e2e_s=0.2, queue_s=0.003, aborted=False)
    # Request 2: aborted while still queued.
    m.on_request_finished(7, 0, 0, e2e_s=1.5, queue_s=None, aborted=True)
    # Request 3: one chunk of zero tokens records nothing.
    m.on_first_token(2.5)
    m.on_tokens(0.1, 0)
    m.on_request_finished(3, 1, 3, e2e_s=2.5, queue_s=0.5, aborted=False)
    m.on_scheduler_stats(2, 1, 300, 0.25, 123.5, 0.5, 40, 20)
    m.on_scheduler_stats(2, 3, 310, 0.3, 120.0, 0.4, 30, 10)  # stale totals: counters hold

    s = parse_exposition(m.render())
    ours = {k: v for k, v in s.items() if not k[0].startswith("process_")}
    assert all(name.startswith("radixlm:") for name, _ in ours)
    assert all(("model_name", 'llama "3"') in labels for _, labels in ours)

    def v(name: str, **extra: str) -> float:
        if "le" in extra:  # bucket bounds as the exposition writes them ("2.0", "+Inf")
            extra["le"] = floatToGoString(float(extra["le"]))
        return s[(f"radixlm:{name}", model | frozenset(extra.items()))]

    assert v("prompt_tokens_total") == 20
    assert v("generation_tokens_total") == 6
    assert v("cached_tokens_total") == 7
    assert v("num_requests_total") == 3
    assert v("num_aborted_requests_total") == 1
    assert v("prefix_cache_queried_tokens_total") == 40
    assert v("prefix_cache_hit_tokens_total") == 20

    assert v("time_to_first_token_seconds_count") == 2
    assert v("time_to_first_token_seconds_sum") == pytest.approx(2.55)
    assert v("time_to_first_token_seconds_bucket", le="0.05") == 1
    assert v("time_to_first_token_seconds_bucket", le="2") == 1
    assert v("time_to_first_token_seconds_bucket", le="4") == 2
    # per-token ITL: 0.02 s x2 and 0.01 s x2 -> 4 observations summing to the chunk times
    assert v("inter_token_latency_seconds_count") == 4
    assert v("inter_token_latency_seconds_sum") == pytest.approx(0.06)
    assert v("inter_token_latency_seconds_bucket", le="0.01") == 2
    assert v("inter_token_latency_seconds_bucket", le="0.02") == 4
    assert v("e2e_request_latency_seconds_count") == 3
    assert v("e2e_request_latency_seconds_sum") == pytest.approx(4.2)
    assert v("e2e_request_latency_seconds_bucket", le="0.2") == 1
    assert v("e2e_request_latency_seconds_bucket", le="+Inf") == 3
    assert v("queue_time_seconds_count") == 2
    assert v("queue_time_seconds_bucket", le="0.005") == 1

    assert v("num_running_reqs") == 2
    assert v("num_queue_reqs") == 3
    assert v("num_used_tokens") == 310
    assert v("token_usage") == 0.3
    assert v("gen_throughput") == 120
    assert v("cache_hit_rate") == 0.4

    expected_families = {
        "prompt_tokens_total": "counter",
        "generation_tokens_total": "counter",
        "cached_tokens_total": "counter",
        "num_requests_total": "counter",
        "num_aborted_requests_total": "counter",
        "prefix_cache_queried_tokens_total": "counter",
        "prefix_cache_hit_tokens_total": "counter",
        "time_to_first_token_seconds": "histogram",
        "inter_token_latency_seconds": "histogram",
        "e2e_request_latency_seconds": "histogram",
        "queue_time_seconds": "histogram",
        "num_running_reqs": "gauge",
        "num_queue_reqs": "gauge",
        "num_used_tokens": "gauge",
        "token_usage": "gauge",
        "gen_throughput": "gauge",
        "cache_hit_rate": "gauge",
        "constrained_output_violations_total": "counter",
        "constrained_unenforced_requests_total": "counter",
        "tenant_requests_total": "counter",
        "tenant_prompt_tokens_total": "counter",
        "tenant_generation_tokens_total": "counter",
    }
    declared = {
        f.name: f.type
        for f in text_string_to_metric_families(m.render().decode())
        if not f.name.startswith("process_") and not f.name.endswith("_created")
    }
    assert declared == {
        f"radixlm:{k.removesuffix('_total')}": t for k, t in expected_families.items()
    }


def test_sglang_names_and_process_metrics():
    """--metrics-compat sglang: the same series under SGLang's prefix; process metrics for the
    main process and each child."""
    m = ServerMetrics("m", "sglang", {"scheduler": os.getpid(), "detokenizer": os.getpid()})
    m.on_request_finished(5, 2, 1, e2e_s=0.1, queue_s=0.01, aborted=False)
    s = parse_exposition(m.render())
    names = {name for name, _ in s}
    for name in ("sglang:prompt_tokens_total", "sglang:num_running_reqs",
                 "sglang:time_to_first_token_seconds_bucket", "sglang:cache_hit_rate",
                 "sglang:token_usage", "sglang:e2e_request_latency_seconds_count"):  # fmt: skip
        assert name in names, name
    assert not any(n.startswith("radixlm:") for n in names)
    assert s[("sglang:prompt_tokens_total", frozenset({("model_name", "m")}))] == 5
    for proc in ("process", "radixlm_scheduler_process", "radixlm_detokenizer_process"):
        assert s[(f"{proc}_resident_memory_bytes", frozenset())] > 0
    with pytest.raises(ValueError, match="prefix"):
        ServerMetrics("m", "vllm")
