"""Waiting-queue order and prefill admission budgets.

Policies: ``fcfs`` (arrival order), ``lof`` (longest remaining output first), ``random``, and
the cache-aware ``lpm`` (longest cached prefix first) / ``dfs-weight``. Cache-aware policies
fall back to FCFS when the cache cannot share prefixes or more than ``LPM_FALLBACK_QUEUE``
requests wait (matching every request each step would cost more than it saves).

Admission (``PrefillAdder``): a request is admitted while
``extend_len + reserve(output) <= available + evictable − reserved_by_running``, where the
output reserve is ``min(remaining_new_tokens, CLIP) × new_token_ratio``. The ratio starts at
0.7 × conservativeness, decays while decoding goes well and jumps after a retraction, so the
scheduler over-admits a little and retracts rarely. The first request is always admitted when
nothing else runs (progress is guaranteed: every request fits in the pool alone).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from radixlm.mem.cache import MatchResult, PrefixCache
from radixlm.scheduler.req import Req

CLIP_MAX_NEW_TOKENS = 4096
LPM_FALLBACK_QUEUE = 128
INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO_FACTOR = 0.14
NEW_TOKEN_RATIO_DECAY_STEPS = 600
RETRACT_DECODE_STEPS = 20


def order_waiting_queue(
    waiting: list[Req], policy: str, cache: PrefixCache, rng: random.Random
) -> dict[int, MatchResult]:
    """Sort ``waiting`` in place; returns prefix matches computed on the way (by ``id(req)``)."""
    matches: dict[int, MatchResult] = {}
    cache_aware = policy in ("lpm", "dfs-weight")
    if cache_aware and cache.shares_prefixes and len(waiting) <= LPM_FALLBACK_QUEUE:
        for req in waiting:
            matches[id(req)] = cache.match_prefix(req.fill_ids[: req.max_cacheable_prefix()])
        waiting.sort(key=lambda r: (-len(matches[id(r)].slots), r.arrival))
    elif policy == "lof":
        waiting.sort(key=lambda r: (-r.remaining_new_tokens(), r.arrival))
    elif policy == "random":
        rng.shuffle(waiting)
    else:
        waiting.sort(key=lambda r: r.arrival)
    return matches


@dataclass
class Admission:
    req: Req
    prefix_len: int  # tokens whose KV comes from the cache (or, resuming a chunk, the row)
    extend_len: int
    chunked: bool  # this round stops before the end of the request's fill_ids


@dataclass
class PrefillAdder:
    """Greedy admission under token budgets for one prefill batch."""

    rem_total: int  # pool tokens still free for new KV after running requests' reserves
    rem_input: int  # max_prefill_tokens left
    rem_chunk: int | None  # chunked_prefill_size left (None: no chunking)
    rem_requests: int  # request slots left (max_running_requests − running)
    new_token_ratio: float
    nothing_running: bool
    admitted: list[Admission] = field(default_factory=list)

    def output_reserve(self, req: Req) -> int:
        return math.ceil(
            min(req.remaining_new_tokens(), CLIP_MAX_NEW_TOKENS) * self.new_token_ratio
        )

    def try_add(self, req: Req, prefix_len: int) -> bool:
        """Admit ``req`` whole or as a chunk. Returns False once the batch is full."""
        if self.rem_requests <= 0:
            return False
        extend = req.fill_len - prefix_len
        unconstrained = not self.admitted and self.nothing_running
        if self.rem_chunk is not None and extend > self.rem_chunk:
            # Chunk: compute what the chunk budget allows now; reserve no output yet.
            take = self.rem_chunk if unconstrained else min(self.rem_chunk, self.rem_total)
            if take <= 0:
                return False
            self.admitted.append(Admission(req, prefix_len, take, chunked=True))
            self.rem_chunk = 0
            self.rem_requests -= 1
            return False  # the chunk budget is spent
        need = extend + self.output_reserve(req)
        if not unconstrained:
            if need > self.rem_total:
                return False
            if extend > self.rem_input and self.admitted:
                return False
        self.admitted.append(Admission(req, prefix_len, extend, chunked=False))
        self.rem_total -= need
        self.rem_input -= extend
        if self.rem_chunk is not None:
            self.rem_chunk -= extend
        self.rem_requests -= 1
        return self.rem_requests > 0 and self.rem_input > 0 and self.rem_chunk != 0
