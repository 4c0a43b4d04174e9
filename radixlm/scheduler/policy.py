"""Waiting-queue order and prefill admission budgets.

Policies: ``fcfs`` (arrival order), ``lof`` (longest remaining output first), ``random``, and
the cache-aware ``lpm`` (longest cached prefix first) and ``dfs-weight`` (walk the radix tree
heaviest subtree first, so requests sharing a prefix run together). Cache-aware policies fall
back to FCFS when the cache cannot share prefixes, and to FCFS with in-batch deferral over the
first ``LPM_FALLBACK_QUEUE`` requests when more wait (matching every request each pass would
cost more than it saves).

Cache-aware extras:

- *In-batch prefix awareness*: a request with a short cached match that shares at least
  ``IN_BATCH_PREFIX_TOKENS`` uncached tokens — and at least half of what it would compute —
  with a request ahead of it (or with the mid-chunk request's uncomputed part) is deferred,
  so the one ahead computes the shared prefix and the rest hit the cache on the next pass.
- *Aging*: each pass a request has spent waiting counts as ``aging`` matched tokens (lpm sort
  key ``matched + aging × passes``), so a request is only ever overtaken by requests that
  arrived within ``longest match // aging + 1`` passes after it: a cache miss cannot starve
  behind a stream of cache hits (sgl-project/sglang#31954). Under dfs-weight a request whose
  bonus exceeds the longest match in the queue goes first.

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
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from radixlm.mem.cache import MatchResult, PrefixCache
from radixlm.mem.kv_pool import SlotAllocator
from radixlm.mem.radix_cache import RadixCache, common_prefix_len
from radixlm.scheduler.req import Req

CLIP_MAX_NEW_TOKENS = 4096
LPM_FALLBACK_QUEUE = 128
IN_BATCH_PREFIX_TOKENS = 32
INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO_FACTOR = 0.14
NEW_TOKEN_RATIO_DECAY_STEPS = 600
RETRACT_DECODE_STEPS = 20


def order_waiting_queue(
    waiting: list[Req],
    policy: str,
    cache: PrefixCache,
    rng: random.Random,
    aging: int = 0,
    chunked: Req | None = None,
) -> tuple[dict[int, MatchResult], set[int]]:
    """Sort ``waiting`` in place (one scheduling pass). Returns the prefix matches computed on
    the way and the deferred requests (both by ``id(req)``): a deferred request should not
    join a batch that already admitted others — it waits one pass for their shared prefix
    (including the part the mid-prefill ``chunked`` request is still computing).
    Every waiting request's ``waiting_passes`` (passes seen before this one) grows by one."""
    matches: dict[int, MatchResult] = {}
    deferred: set[int] = set()
    cache_aware = policy in ("lpm", "dfs-weight") and cache.shares_prefixes
    if cache_aware and len(waiting) > LPM_FALLBACK_QUEUE:
        # Long queue: FCFS, but the head still gets in-batch deferral (a burst sharing one
        # template computes it once); admission stops at the first deferred request.
        waiting.sort(key=lambda r: r.arrival)
        head = waiting[:LPM_FALLBACK_QUEUE]
        _match_all(head, cache, matches)
        deferred = _in_batch_deferred(head, matches, cache)
        deferred |= _waiting_for_chunk(head, matches, chunked)
        head.sort(key=lambda r: id(r) in deferred)  # stable: arrival order otherwise
        waiting[:LPM_FALLBACK_QUEUE] = head
    elif cache_aware:
        waiting.sort(key=lambda r: r.arrival)
        _match_all(waiting, cache, matches)
        deferred = _in_batch_deferred(waiting, matches, cache)
        deferred |= _waiting_for_chunk(waiting, matches, chunked)
        if policy == "lpm":
            waiting.sort(
                key=lambda r: (
                    id(r) in deferred,
                    -(len(matches[id(r)].slots) + aging * r.waiting_passes),
                    r.arrival,
                )
            )
        else:
            _sort_dfs_weight(waiting, matches, deferred, aging)
    elif policy == "lof":
        waiting.sort(key=lambda r: (-r.remaining_new_tokens(), r.arrival))
    elif policy == "random":
        rng.shuffle(waiting)
    else:
        waiting.sort(key=lambda r: r.arrival)
    for req in waiting:
        req.waiting_passes += 1
    return matches, deferred


def _match_all(reqs: list[Req], cache: PrefixCache, matches: dict[int, MatchResult]) -> None:
    for req in reqs:
        ids = req.fill_ids[: req.max_cacheable_prefix()]
        matches[id(req)] = cache.match_prefix(ids, req.cache_namespace)


def _worth_waiting(shared_uncached: int, uncached: int) -> bool:
    """Waiting a pass pays off only when the prefix someone else is computing is long and most
    of what this request would compute; a short common preamble is not worth the delay."""
    return shared_uncached >= IN_BATCH_PREFIX_TOKENS and 2 * shared_uncached >= uncached


def _waiting_for_chunk(
    reqs: list[Req], matches: dict[int, MatchResult], chunked: Req | None
) -> set[int]:
    """Requests sharing the part of their prompt that the mid-prefill request is computing
    now (a long shared document spans several chunks: its followers wait for the last one)."""
    if chunked is None:
        return set()
    lead = chunked.fill_ids
    out = set()
    for req in reqs:
        if req.cache_namespace != chunked.cache_namespace:
            continue
        ids, cached = req.fill_ids, len(matches[id(req)].slots)
        shared = common_prefix_len(lead, ids, 0)
        if _worth_waiting(shared - cached, len(ids) - cached):
            out.add(id(req))
    return out


def _in_batch_deferred(
    waiting: list[Req], matches: dict[int, MatchResult], cache: PrefixCache
) -> set[int]:
    """Requests (by id) whose uncached prefix an earlier waiting request will compute first."""
    scratch: RadixCache | None = None
    deferred: set[int] = set()
    for req in waiting:
        if len(matches[id(req)].slots) > IN_BATCH_PREFIX_TOKENS:
            continue
        if scratch is None:  # a tree of waiting prompts; its values are unused
            scratch = RadixCache(None, SlotAllocator(0, "cpu"))  # type: ignore[arg-type]
            scratch.stats = cache.stats  # its time counts as tree-operation time
        ids = req.fill_ids
        shared = len(scratch.match_prefix(ids, req.cache_namespace).slots)
        if _worth_waiting(shared, len(ids) - len(matches[id(req)].slots)):
            deferred.add(id(req))
        else:
            scratch.insert(ids, torch.zeros(len(ids), dtype=torch.int64), req.cache_namespace)
    return deferred


def _sort_dfs_weight(
    waiting: list[Req], matches: dict[int, MatchResult], deferred: set[int], aging: int
) -> None:
    """Order by a DFS over the tree, heaviest subtree (most waiting requests) first; requests
    are emitted at the node where their match ends, deeper nodes before their ancestors."""
    longest = max(len(m.slots) for m in matches.values())
    overdue = [r for r in waiting if aging and aging * r.waiting_passes > longest]
    overdue_ids = {id(r) for r in overdue}
    at_node: dict = defaultdict(list)
    weight: dict = defaultdict(int)
    children: dict = defaultdict(list)
    root = None
    for req in waiting:
        if id(req) in overdue_ids or id(req) in deferred:
            continue
        node = matches[id(req)].handle
        at_node[id(node)].append(req)
        while node is not None:
            if weight[id(node)] == 0 and node.parent is not None:
                children[id(node.parent)].append(node)
            weight[id(node)] += 1
            root, node = node, node.parent
    ordered: list[Req] = list(overdue)
    stack = [root] if root is not None else []
    post: list = []
    while stack:  # iterative DFS; a node's requests come after its whole subtree
        node = stack.pop()
        if node is None:
            ordered.extend(post.pop())
            continue
        stack.append(None)
        post.append(at_node.get(id(node), []))
        kids = sorted(children.get(id(node), []), key=lambda n: weight[id(n)])
        stack.extend(kids)  # the heaviest child is popped first
    ordered.extend(r for r in waiting if id(r) in deferred and id(r) not in overdue_ids)
    waiting[:] = ordered


class NewTokenRatio:
    """The share of ``max_new_tokens`` running requests are expected to still use.

    Starts at ``0.7 × conservativeness`` (capped at 1), decays linearly to 14 % of that over
    600 successful decode steps, jumps after a retraction, and resets when the scheduler idles.
    """

    def __init__(self, conservativeness: float) -> None:
        self.init = min(INIT_NEW_TOKEN_RATIO * conservativeness, 1.0)
        self.min = self.init * MIN_NEW_TOKEN_RATIO_FACTOR
        self.step = (self.init - self.min) / NEW_TOKEN_RATIO_DECAY_STEPS
        self.value = self.init

    def reset(self) -> None:
        self.value = self.init

    def decay(self) -> None:
        self.value = max(self.value - self.step, self.min)

    def after_retraction(self, running: list[Req]) -> None:
        """Raise the ratio to what the survivors need for ``RETRACT_DECODE_STEPS`` more steps."""
        total_new = sum(r.max_new_tokens for r in running) or 1
        done = sum(len(r.output_ids) for r in running)
        need = (done + RETRACT_DECODE_STEPS * len(running)) / total_new
        self.value = min(1.0, max(self.value, need))


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
