"""The dashboard's data path: the radix tree's hit counts and top prefixes, and the history
window with its TTFT percentiles."""

from __future__ import annotations

import torch

from radixlm.mem.kv_pool import SlotAllocator
from radixlm.mem.radix_cache import RadixCache
from radixlm.mem.req_to_token import ReqToTokenPool
from radixlm.server.dashboard import DashboardHistory


def _cache() -> RadixCache:
    return RadixCache(ReqToTokenPool(4, 64, "cpu"), SlotAllocator(256, "cpu"))


def test_top_prefixes_rank_admitted_hits():
    cache = _cache()
    system = list(range(10, 30))
    for tail in ([1, 2], [3, 4], [5, 6]):
        ids = system + tail
        cache.insert(ids, torch.arange(len(ids)) + 100 * tail[0])
    for _ in range(3):  # three requests admitted on the system prompt
        cache.record_hit(cache.match_prefix(system + [9]).handle)
    cache.record_hit(cache.match_prefix(system + [1, 2, 7]).handle)  # one on a longer one
    nodes, top = cache.top_prefixes(5)
    assert nodes == 4  # the shared system node + three tails
    assert top[0] == (system, 4)  # every admitted request went through it
    assert top[1] == (system + [1, 2], 1)
    assert len(top) == 2  # prefixes never hit are not listed


def test_history_window_and_ttft_percentiles():
    h = DashboardHistory(window_s=100)
    for i in range(100):
        h.on_first_token(0.01 * (i + 1), now=1000.0 + i)  # 10 ms .. 1 s over 100 s
    h.on_heartbeat({"num_running_reqs": 3, "gen_throughput": 42.0}, now=1100.0)
    s = h.series()[-1]
    assert s["running"] == 3 and s["gen_throughput"] == 42.0
    # the last minute's TTFTs only (0.41 .. 1.0 s)
    assert 0.68 < s["ttft_p50"] < 0.74 and s["ttft_p99"] == 1.0
    h.on_heartbeat({}, now=1250.0)  # 150 s later: the old sample and TTFTs leave the window
    assert len(h.series()) == 1 and not h.ttfts and h.series()[0]["ttft_p50"] is None
