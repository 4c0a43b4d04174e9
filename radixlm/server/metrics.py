"""``ServerMetrics``: the server's metric set behind ``/metrics``, on ``prometheus_client``.

Names and labels are SGLang's (``prompt_tokens_total``, ``time_to_first_token_seconds``,
``num_running_reqs``, ``token_usage``, ``cache_hit_rate``, ...; every series labelled
``model_name``) under the prefix ``radixlm:``, or ``sglang:`` with ``--metrics-compat sglang``
so an SGLang Grafana dashboard works unchanged; plus this server's own: per-tenant counters,
constrained-output violations and unenforced schemas.

Every series is recorded in the main process: request latencies and token counts by the
tokenizer manager, the scheduler's gauges and cumulative prefix-cache totals from its
heartbeats (mirrored by a collector, since a Prometheus counter cannot be set). So no
multiprocess mode is needed. Process metrics (CPU seconds, resident memory, open files) are
exported for all three processes: the main one as ``process_*``, the children as
``radixlm_scheduler_process_*`` and ``radixlm_detokenizer_process_*``.

Each ``ServerMetrics`` has its own ``CollectorRegistry`` (no global state).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "INTER_TOKEN_BUCKETS", "LATENCY_BUCKETS", "PREFIXES", "ServerMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
PREFIXES = ("radixlm", "sglang")  # --metrics-compat

# NOTE: SGLang's TTFT/E2E buckets start at 100 ms; ours extend down to 1 ms (prefix-cache hits on
# a small model answer that fast) and up to 10 min, with the same 0.1..400 s core so quantiles
# stay comparable.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05,
    0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10,
    20, 40, 60, 80, 100, 200, 400, 600,
)  # fmt: skip
# Per-token decode latency: fine-grained in the 1-100 ms range where decode steps live.
INTER_TOKEN_BUCKETS: tuple[float, ...] = (
    0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04,
    0.06, 0.08, 0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10,
)  # fmt: skip


class _MirroredTotals(Collector):
    """Counters whose value is a total kept elsewhere (the scheduler's), set on each heartbeat;
    a smaller total (a restarted scheduler) is ignored, so the series never decreases."""

    def __init__(self, prefix: str, model_name: str, docs: dict[str, str]) -> None:
        self.prefix, self.model_name, self.docs = prefix, model_name, docs
        self.values = dict.fromkeys(docs, 0.0)

    def set_total(self, name: str, value: float) -> None:
        self.values[name] = max(self.values[name], float(value))

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, doc in self.docs.items():
            family = CounterMetricFamily(f"{self.prefix}{name}", doc, labels=["model_name"])
            family.add_metric([self.model_name], self.values[name])
            yield family


class ServerMetrics:
    """The server's metric set (see the module docstring). The tokenizer manager calls the
    ``on_*`` hooks; ``/metrics`` returns ``render()`` with ``CONTENT_TYPE``. All series but the
    per-tenant ones exist (at zero) from construction on.

    ``child_pids``: name → pid of the server's other processes, for their process metrics."""

    def __init__(
        self,
        model_name: str,
        prefix: str = "radixlm",
        child_pids: dict[str, int] | None = None,
    ) -> None:
        if prefix not in PREFIXES:
            raise ValueError(f"metrics prefix must be one of {PREFIXES}, got {prefix!r}")
        self.model_name = model_name
        self.prefix = p = f"{prefix}:"
        self.registry = reg = CollectorRegistry()
        lab = ["model_name"]

        def counter(name: str, doc: str) -> Counter:
            return Counter(p + name, doc, lab, registry=reg).labels(model_name)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(p + name, doc, lab, registry=reg).labels(model_name)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(p + name, doc, lab, buckets=buckets, registry=reg).labels(model_name)

        ProcessCollector(namespace="", registry=reg)
        for child, pid in (child_pids or {}).items():
            ProcessCollector(namespace=f"radixlm_{child}", pid=_fixed(pid), registry=reg)

        tl = ["model_name", "tenant"]  # --api-key-file tenants; a series appears on first use
        self.tenant_requests = Counter(
            p + "tenant_requests_total", "Finished requests per API-key tenant.", tl, registry=reg
        )
        self.tenant_prompt_tokens = Counter(
            p + "tenant_prompt_tokens_total", "Prompt tokens per API-key tenant.", tl,
            registry=reg,
        )  # fmt: skip
        self.tenant_generation_tokens = Counter(
            p + "tenant_generation_tokens_total", "Generated tokens per API-key tenant.", tl,
            registry=reg,
        )  # fmt: skip
        self.prompt_tokens = counter("prompt_tokens_total", "Number of prefill tokens processed.")
        self.generation_tokens = counter(
            "generation_tokens_total", "Number of generation tokens processed."
        )
        self.cached_tokens = counter(
            "cached_tokens_total", "Number of prompt tokens served from the prefix cache."
        )
        self.num_requests = counter("num_requests_total", "Number of finished requests.")
        self.num_aborted_requests = counter(
            "num_aborted_requests_total", "Number of requests aborted (client or server)."
        )
        self.scheduler_totals = _MirroredTotals(
            p,
            model_name,
            {
                "prefix_cache_queried_tokens": "Prompt tokens looked up in the prefix cache by "
                "the scheduler.",
                "prefix_cache_hit_tokens": "Of the queried tokens, those found in the prefix "
                "cache.",
            },
        )
        reg.register(self.scheduler_totals)
        self.time_to_first_token = histogram(
            "time_to_first_token_seconds", "Time to first token in seconds.", LATENCY_BUCKETS
        )
        self.inter_token_latency = histogram(
            "inter_token_latency_seconds",
            "Latency between consecutive output tokens in seconds.",
            INTER_TOKEN_BUCKETS,
        )
        self.e2e_request_latency = histogram(
            "e2e_request_latency_seconds",
            "End-to-end request latency in seconds.",
            LATENCY_BUCKETS,
        )
        self.queue_time = histogram(
            "queue_time_seconds", "Time spent waiting in the scheduler queue.", LATENCY_BUCKETS
        )
        self.num_running_reqs = gauge("num_running_reqs", "Number of running requests.")
        self.num_queue_reqs = gauge("num_queue_reqs", "Number of requests in the waiting queue.")
        self.num_used_tokens = gauge("num_used_tokens", "Number of KV-cache slots in use.")
        self.token_usage = gauge("token_usage", "Fraction of the KV-cache pool in use (0..1).")
        self.gen_throughput = gauge("gen_throughput", "Generation throughput (tokens/s).")
        self.cache_hit_rate = gauge("cache_hit_rate", "Prefix-cache hit rate (0..1).")
        self.constrained_violations = counter(
            "constrained_output_violations_total",
            "Complete constrained outputs that fail their JSON schema (flagged valid: false).",
        )
        self.constrained_unenforced = counter(
            "constrained_unenforced_requests_total",
            "Constrained requests decoded with JSON Schema keywords that were not enforced.",
        )

    def on_first_token(self, ttft_s: float) -> None:
        """The first output token of a request arrived ``ttft_s`` after the request did."""
        self.time_to_first_token.observe(ttft_s)

    def on_tokens(self, itl_s: float, num_tokens: int) -> None:
        """A chunk of ``num_tokens`` output tokens (after the first) arrived ``itl_s`` after the
        previous chunk.

        NOTE: the histogram counts tokens, not chunks: the chunk's latency is spread evenly, i.e.
        ``itl_s / num_tokens`` is observed ``num_tokens`` times, so ``_count`` is the number of
        timed tokens and ``_sum`` the time they took, whatever the streaming granularity.
        A chunk with no tokens records nothing. Token totals are counted at request end.
        """
        if num_tokens <= 0:
            return
        for _ in range(num_tokens):
            self.inter_token_latency.observe(itl_s / num_tokens)

    def on_request_finished(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int,
        e2e_s: float,
        queue_s: float | None,
        aborted: bool,
        tenant: str | None = None,
    ) -> None:
        """A request ended (finished or aborted): add its token counts and latencies (and to
        its tenant's counters, for a request authorized by an ``--api-key-file`` key).

        NOTE: as in SGLang, an aborted request is also counted in ``num_requests_total`` and its
        (truncated) ``e2e_s`` is observed; ``queue_s`` is None when it never left the queue.
        """
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(completion_tokens)
        self.cached_tokens.inc(cached_tokens)
        self.num_requests.inc()
        if aborted:
            self.num_aborted_requests.inc()
        self.e2e_request_latency.observe(e2e_s)
        if queue_s is not None:
            self.queue_time.observe(queue_s)
        if tenant is not None:
            self.tenant_requests.labels(self.model_name, tenant).inc()
            self.tenant_prompt_tokens.labels(self.model_name, tenant).inc(prompt_tokens)
            self.tenant_generation_tokens.labels(self.model_name, tenant).inc(completion_tokens)

    def on_constrained_output(self, report: dict) -> None:
        """A constrained request finished with ``report`` (``meta_info["constraint"]``)."""
        if report.get("valid") is False:
            self.constrained_violations.inc()
        if report.get("unenforced"):
            self.constrained_unenforced.inc()

    def on_scheduler_stats(
        self,
        num_running_reqs: int,
        num_queue_reqs: int,
        num_used_tokens: int,
        token_usage: float,
        gen_throughput: float,
        cache_hit_rate: float,
        prefix_cache_queried_tokens: int,
        prefix_cache_hit_tokens: int,
    ) -> None:
        """A stats snapshot from the scheduler: set the gauges and mirror its cumulative prefix-
        cache totals (a smaller total, e.g. from a restarted scheduler, is ignored)."""
        self.num_running_reqs.set(num_running_reqs)
        self.num_queue_reqs.set(num_queue_reqs)
        self.num_used_tokens.set(num_used_tokens)
        self.token_usage.set(token_usage)
        self.gen_throughput.set(gen_throughput)
        self.cache_hit_rate.set(cache_hit_rate)
        self.scheduler_totals.set_total("prefix_cache_queried_tokens", prefix_cache_queried_tokens)
        self.scheduler_totals.set_total("prefix_cache_hit_tokens", prefix_cache_hit_tokens)

    def render(self) -> bytes:
        """All metrics in the text exposition format (serve with ``CONTENT_TYPE``)."""
        return generate_latest(self.registry)


def _fixed(pid: int) -> Callable[[], int]:
    return lambda: pid
