"""Prometheus text exposition: exact rendering, histogram semantics, escaping, counter
monotonicity, registry clashes, thread safety, and the ``ServerMetrics`` hooks end to end."""

from __future__ import annotations

import math
import re
import threading

import pytest

from radixlm.server import metrics, prometheus
from radixlm.server.metrics import INTER_TOKEN_BUCKETS, LATENCY_BUCKETS, ServerMetrics
from radixlm.server.prometheus import (
    CONTENT_TYPE,
    Counter,
    Gauge,
    Histogram,
    MetricsRegistry,
    escape_label_value,
    format_value,
)

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE_RE = re.compile(
    rf"^(?P<name>{_NAME})(?:\{{(?P<labels>{_LABEL}(?:,{_LABEL})*)?\}})? (?P<value>\S+)$"
)
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def parse_exposition(text: str) -> dict[tuple[str, frozenset], float]:
    """Strict little parser: every sample line is ``name{labels} value`` and belongs to a family
    declared before it by both ``# HELP`` and ``# TYPE``; returns {(name, labels): value}."""
    assert text.endswith("\n")
    helps: set[str] = set()
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert name not in helps, f"second HELP for {name}"
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name in helps and name not in types and kind in _SUFFIXES, line
            types[name] = kind
        else:
            m = _SAMPLE_RE.match(line)
            assert m, f"malformed sample line {line!r}"
            name = m["name"]
            family = [
                f
                for f, kind in types.items()
                for s in _SUFFIXES[kind]
                if name == f + s and (kind != "histogram" or s)
            ]
            assert family, f"sample {name} has no HELP/TYPE before it"
            labels = frozenset((k, _unescape(v)) for k, v in _LABEL_RE.findall(m["labels"] or ""))
            key = (name, labels)
            assert key not in samples, f"duplicate series {key}"
            samples[key] = float(m["value"])
    assert set(types) == helps, "HELP without TYPE"
    return samples


def test_format_value():
    assert format_value(3) == "3"
    assert format_value(3.0) == "3"
    assert format_value(0.25) == "0.25"
    assert format_value(-2.0) == "-2"
    assert format_value(math.inf) == "+Inf"
    assert format_value(-math.inf) == "-Inf"
    assert format_value(math.nan) == "NaN"
    assert format_value(1e20) == "1e+20"
    assert format_value(True) == "1"
    for v in (0.1, 1e-5, 123456.789, 1e20):
        assert float(format_value(v)) == v


def test_counter_exact_render():
    c = Counter("req_total", "Requests.", ["model_name", "code"])
    c.labels(model_name="m", code=200).inc()
    c.labels(model_name="m", code=200).inc(2)
    c.labels(model_name="m", code=500).inc(0.5)
    assert c.render() == (
        "# HELP req_total Requests.\n"
        "# TYPE req_total counter\n"
        'req_total{model_name="m",code="200"} 3\n'
        'req_total{model_name="m",code="500"} 0.5\n'
    )


def test_gauge_exact_render_unlabelled():
    g = Gauge("radixlm:token_usage", "KV use.")
    assert g.render() == (
        "# HELP radixlm:token_usage KV use.\n"
        "# TYPE radixlm:token_usage gauge\n"
        "radixlm:token_usage 0\n"
    )
    g.set(10)
    g.inc(2.5)
    g.dec()
    assert g.get() == 11.5
    assert g.render() == (
        "# HELP radixlm:token_usage KV use.\n"
        "# TYPE radixlm:token_usage gauge\n"
        "radixlm:token_usage 11.5\n"
    )


def test_unlabelled_family_renders_zero_before_any_update():
    assert Gauge("g", "h").render().endswith("\ng 0\n")
    assert Counter("c_total", "h").render().endswith("\nc_total 0\n")


def test_histogram_exact_render():
    h = Histogram("lat_seconds", "Latency.", [0.1, 1, 5], labelnames=["model_name"])
    child = h.labels(model_name="m")
    for v in (0.05, 0.1, 0.7, 3, 100):
        child.observe(v)
    assert h.render() == (
        "# HELP lat_seconds Latency.\n"
        "# TYPE lat_seconds histogram\n"
        'lat_seconds_bucket{model_name="m",le="0.1"} 2\n'
        'lat_seconds_bucket{model_name="m",le="1"} 3\n'
        'lat_seconds_bucket{model_name="m",le="5"} 4\n'
        'lat_seconds_bucket{model_name="m",le="+Inf"} 5\n'
        'lat_seconds_sum{model_name="m"} 103.85\n'
        'lat_seconds_count{model_name="m"} 5\n'
    )


def test_histogram_cumulative_buckets_sum_count():
    h = Histogram("h", "h", [1, 2, 4, math.inf])  # an explicit +Inf is accepted, not doubled
    assert h.bounds == (1, 2, 4, math.inf)
    h.observe(0)
    h.observe(1)  # le is inclusive: lands in the le="1" bucket
    h.observe(1.5)
    h.observe(4.0001)
    h.observe(0.5, count=3)
    samples = parse_exposition(h.render())

    def bucket(le: str) -> float:
        return samples[("h_bucket", frozenset({("le", le)}))]

    assert [bucket(le) for le in ("1", "2", "4", "+Inf")] == [5, 6, 6, 7]
    assert samples[("h_count", frozenset())] == 7
    assert samples[("h_sum", frozenset())] == pytest.approx(0 + 1 + 1.5 + 4.0001 + 1.5)
    # the +Inf bucket always equals _count
    assert bucket("+Inf") == samples[("h_count", frozenset())]


def test_histogram_rejects_bad_buckets_and_nan():
    with pytest.raises(ValueError, match="increasing"):
        Histogram("h", "h", [1, 1, 2])
    with pytest.raises(ValueError, match="finite"):
        Histogram("h", "h", [1, math.nan])
    with pytest.raises(ValueError, match="reserved"):
        Histogram("h", "h", [1], labelnames=["le"])
    with pytest.raises(ValueError, match="NaN"):
        Histogram("h", "h", [1]).observe(math.nan)


def test_label_and_help_escaping():
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    c = Counter("x_total", 'Help with \\ and\nnewline and "quotes".', ["path"])
    c.labels(path='C:\\dir "q"\nnext').inc()
    text = c.render()
    assert text == (
        '# HELP x_total Help with \\\\ and\\nnewline and "quotes".\n'
        "# TYPE x_total counter\n"
        'x_total{path="C:\\\\dir \\"q\\"\\nnext"} 1\n'
    )
    assert parse_exposition(text) == {("x_total", frozenset({("path", 'C:\\dir "q"\nnext')})): 1}


def test_counter_never_decreases():
    c = Counter("mirrored_total", "h")
    c.set_total(10)
    c.set_total(7)  # e.g. a stale or restarted source: ignored
    assert c.get() == 10
    c.set_total(math.nan)
    assert c.get() == 10
    c.set_total(12)
    c.inc(3)
    assert c.get() == 15
    with pytest.raises(ValueError):
        c.inc(-1)
    with pytest.raises(ValueError):
        c.inc(math.nan)
    assert c.get() == 15


def test_family_validation():
    with pytest.raises(ValueError, match="_total"):
        Counter("requests", "h")
    with pytest.raises(ValueError, match="invalid metric name"):
        Gauge("1bad", "h")
    with pytest.raises(ValueError, match="invalid label name"):
        Gauge("g", "h", ["__reserved"])
    with pytest.raises(ValueError, match="duplicate label"):
        Gauge("g", "h", ["a", "a"])
    g = Gauge("g", "h", ["a", "b"])
    with pytest.raises(ValueError, match="takes labels"):
        g.labels(a="1")
    with pytest.raises(ValueError, match="use .labels"):
        g.set(1)
    assert g.labels(a=1, b=2) is g.labels(b="2", a="1")
    assert g.render() == '# HELP g h\n# TYPE g gauge\ng{a="1",b="2"} 0\n'


def test_registry_order_and_duplicates():
    reg = MetricsRegistry()
    reg.gauge("b", "second name, registered first").set(1)
    reg.counter("a_total", "h").inc()
    reg.histogram("lat", "h", [1])
    text = reg.render()
    assert text.index("# HELP b ") < text.index("# HELP a_total ") < text.index("# HELP lat ")
    parse_exposition(text)
    with pytest.raises(ValueError, match="clashes"):
        reg.gauge("b", "again")
    with pytest.raises(ValueError, match="clashes"):
        reg.gauge("lat_count", "collides with the histogram's _count sample")
    with pytest.raises(ValueError, match="clashes"):
        reg.histogram("b", "h", [1])  # same family name, different type
    reg.histogram("a", "h", [1])  # a, a_bucket, a_sum, a_count: no clash with a_total
    assert MetricsRegistry().render() == ""


def test_thread_safety_exact_totals():
    c = Counter("c_total", "h", ["t"])
    h = Histogram("h", "h", [0.5])
    n_threads, n_iter = 8, 5000
    start = threading.Barrier(n_threads + 1)
    renders: list[str] = []

    def work(i: int) -> None:
        start.wait()
        child = c.labels(t="shared")
        for _ in range(n_iter):
            child.inc()
            h.observe(i % 2)  # half the threads land in le="0.5", half only in +Inf

    def render() -> None:
        start.wait()
        for _ in range(50):
            renders.append(h.render())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    threads.append(threading.Thread(target=render))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.labels(t="shared").get() == n_threads * n_iter
    s = parse_exposition(h.render())
    assert s[("h_count", frozenset())] == n_threads * n_iter
    assert s[("h_bucket", frozenset({("le", "0.5")}))] == n_threads * n_iter / 2
    assert s[("h_sum", frozenset())] == n_threads * n_iter / 2
    for text in renders:  # every concurrent snapshot is self-consistent
        s = parse_exposition(text)
        assert s[("h_bucket", frozenset({("le", "+Inf")}))] == s[("h_count", frozenset())]


def test_bucket_lists_span_1ms_to_10min():
    assert LATENCY_BUCKETS[0] == 0.001 and LATENCY_BUCKETS[-1] == 600
    assert INTER_TOKEN_BUCKETS[0] == 0.001
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS))
    assert list(INTER_TOKEN_BUCKETS) == sorted(set(INTER_TOKEN_BUCKETS))


def test_server_metrics_scenario():
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    assert metrics.CONTENT_TYPE is prometheus.CONTENT_TYPE  # re-exported for http_server
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
    assert all(name.startswith("radixlm:") for name, _ in s)
    assert all(("model_name", 'llama "3"') in labels for _, labels in s)

    def v(name: str, **extra: str) -> float:
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
    declared = dict(
        line.split(" ")[2:4] for line in m.render().splitlines() if line.startswith("# TYPE ")
    )
    assert declared == {f"radixlm:{k}": t for k, t in expected_families.items()}
