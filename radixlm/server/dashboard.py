"""The live dashboard: ``GET /dashboard`` (one self-contained HTML page, no build step, no
network: its script is inline, charts are drawn on canvases by hand) and ``GET
/dashboard/data`` (the JSON the page polls, which the tests also read).

The page shows running, queued and grammar-waiting requests; the KV pool split into free,
evictable (cached, reclaimable) and protected (cached and in use) tokens next to the tokens
requests hold; the radix tree (node count, the most-hit cached prefixes as decoded text
snippets, evicted tokens); and hit rate, generation throughput and TTFT p50/p99 over the last
minutes. :class:`DashboardHistory` keeps those series in the main process, fed by the
scheduler's heartbeats (about one a second) and each request's first token.

The HTML is open (it holds no data); ``/dashboard/data`` needs the API key like any route, and
the page asks for it (or takes ``#key=...`` from its URL) when the server has one.
"""

from __future__ import annotations

import time
from collections import deque
from importlib.resources import files
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse

WINDOW_SECONDS = 600.0  # the history the page plots
TOP_PREFIXES = 5


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class DashboardHistory:
    """Time series of the last :data:`WINDOW_SECONDS` (bounded: one sample per heartbeat)."""

    def __init__(self, window_s: float = WINDOW_SECONDS) -> None:
        self.window_s = window_s
        self.samples: deque[dict[str, Any]] = deque()
        self.ttfts: deque[tuple[float, float]] = deque()  # (arrival time, TTFT seconds)

    def _trim(self, now: float) -> None:
        while self.samples and self.samples[0]["t"] < now - self.window_s:
            self.samples.popleft()
        while self.ttfts and self.ttfts[0][0] < now - self.window_s:
            self.ttfts.popleft()

    def on_first_token(self, ttft_s: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.ttfts.append((now, ttft_s))
        self._trim(now)

    def ttft_percentiles(self, now: float | None = None) -> tuple[float | None, float | None]:
        """(p50, p99) of the TTFTs of the last minute; None without any."""
        now = time.time() if now is None else now
        recent = [v for t, v in self.ttfts if t >= now - 60]
        return _percentile(recent, 0.5), _percentile(recent, 0.99)

    def on_heartbeat(self, stats: dict[str, Any], now: float | None = None) -> None:
        """One scheduler stats snapshot; TTFT percentiles over the last minute ride along."""
        now = time.time() if now is None else now
        p50, p99 = self.ttft_percentiles(now)
        self.samples.append(
            {
                "t": now,
                "running": stats.get("num_running_reqs", 0),
                "queued": stats.get("num_waiting_reqs", 0),
                "grammar_waiting": stats.get("num_grammar_waiting_reqs", 0),
                "gen_throughput": stats.get("gen_throughput", 0.0),
                "cache_hit_rate": stats.get("cache_hit_rate", 0.0),
                "token_usage": stats.get("token_usage", 0.0),
                "ttft_p50": p50,
                "ttft_p99": p99,
            }
        )
        self._trim(now)

    def series(self) -> list[dict[str, Any]]:
        return list(self.samples)


def _snippet(tokenizer: Any, prefix: dict[str, Any]) -> str:
    if tokenizer is None:
        return f"<{prefix['tokens']} tokens>"
    text = tokenizer.decode(prefix["head"], skip_special_tokens=True)
    if prefix["tail"]:
        gap = prefix["tokens"] - len(prefix["head"]) - len(prefix["tail"])
        tail = tokenizer.decode(prefix["tail"], skip_special_tokens=True)
        text += f" … [{gap} tokens] … {tail}" if gap > 0 else tail
    return text


async def dashboard_data(tm: Any) -> dict[str, Any]:
    """The page's JSON: the scheduler's state now, the radix tree, and the history."""
    stats = await tm.scheduler_stats_with_tree(TOP_PREFIXES)
    pc = stats["prefix_cache"]
    total = tm.ready.max_total_tokens
    free = stats["free_kv_tokens"]
    tree = stats["radix_tree"]
    history = tm.dashboard.series()
    p50, p99 = tm.dashboard.ttft_percentiles()
    return {
        "time": time.time(),
        "model": tm.served_model_name,
        "requests": {
            "running": stats["num_running_reqs"],
            "queued": stats["num_waiting_reqs"],
            "grammar_waiting": stats.get("num_grammar_waiting_reqs", 0),
            "finished": stats["num_finished_requests"],
        },
        "kv": {
            "total": total,
            "free": free,
            "evictable": pc["evictable_tokens"],
            "protected": pc["protected_tokens"],
            "in_requests": max(0, total - free - pc["evictable_tokens"] - pc["protected_tokens"]),
        },
        "radix_tree": {
            "nodes": tree["nodes"],
            "cached_tokens": pc["tree_tokens"],
            "evicted_tokens": pc["evicted_tokens"],
            "top_prefixes": [
                {"tokens": p["tokens"], "hits": p["hits"], "text": _snippet(tm.tokenizer, p)}
                for p in tree["top_prefixes"]
            ],
        },
        "rates": {
            "cache_hit_rate": pc["hit_tokens"] / pc["queried_tokens"]
            if pc["queried_tokens"]
            else 0.0,
            "gen_throughput": history[-1]["gen_throughput"] if history else 0.0,
            "ttft_p50": p50,
            "ttft_p99": p99,
        },
        "history": history,
        "window_seconds": tm.dashboard.window_s,
    }


def create_dashboard_router(tm: Any) -> APIRouter:
    router = APIRouter()
    page = files("radixlm.server").joinpath("static/dashboard.html").read_text(encoding="utf-8")

    @router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(page)

    @router.get("/dashboard/data")
    async def data() -> JSONResponse:
        return JSONResponse(await dashboard_data(tm))

    return router
