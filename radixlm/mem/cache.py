"""Prefix-cache interface and the no-sharing implementation (``ChunkCache``).

The scheduler talks only to :class:`PrefixCache`, so the radix tree slots in without any
``if radix:`` branch in the scheduler. Slot ownership rules every implementation keeps:

- After admission, a request's ``ReqToTokenPool`` row holds ``kv_len`` valid slots; the first
  ``cache_protected_len`` belong to the cache (protected by a lock on ``req.last_node``), the
  rest are the request's private tail.
- ``cache_finished_req`` takes the whole row ``[0, kv_len)`` from the request: every slot ends
  up either in the cache or back in the allocator, and the request's lock is released.
- ``cache_unfinished_req`` (after a prefill chunk) may move the private tail into the cache;
  it rewrites the row with the cache's slots and moves the lock, so the request keeps reading
  the same KV.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from radixlm.mem.kv_pool import SlotAllocator
    from radixlm.mem.req_to_token import ReqToTokenPool
    from radixlm.scheduler.req import Req


# Requests share cached KV only within one namespace (None: the shared one). The scheduler uses
# ``(tenant, extra_key, cache_salt)``; any hashable works.
Namespace = Hashable | None


@dataclass
class MatchResult:
    slots: torch.Tensor  # [n] int64 KV slots of the longest cached prefix
    handle: Any  # cache node to lock while a request uses the prefix (None: nothing to lock)


@dataclass
class CacheStats:
    """Monotonic counters (a flush does not reset them)."""

    evicted_tokens: int = 0
    op_seconds: float = 0.0  # wall time inside tree operations (match/insert/evict)


class PrefixCache(ABC):
    def __init__(self, req_to_token_pool: ReqToTokenPool, allocator: SlotAllocator) -> None:
        self.req_to_token_pool = req_to_token_pool
        self.allocator = allocator
        self.stats = CacheStats()

    @property
    def shares_prefixes(self) -> bool:
        """False for caches whose matches are always empty (policies fall back to FCFS)."""
        return True

    @abstractmethod
    def match_prefix(self, token_ids: list[int], namespace: Namespace = None) -> MatchResult:
        """Longest cached prefix of ``token_ids`` within ``namespace`` (None: the shared one)."""

    @abstractmethod
    def lock(self, handle: Any) -> int:
        """Protect a matched prefix from eviction; returns tokens newly protected."""

    @abstractmethod
    def unlock(self, handle: Any) -> int:
        """Undo one ``lock``; returns tokens that became evictable."""

    @abstractmethod
    def cache_finished_req(self, req: Req, token_ids: list[int]) -> None:
        """Hand over ``req``'s slots for ``token_ids`` (``len == req.kv_len``) and unlock."""

    @abstractmethod
    def cache_unfinished_req(self, req: Req, token_ids: list[int]) -> None:
        """Cache ``req``'s committed tokens mid-flight (chunked prefill boundary)."""

    @abstractmethod
    def evict(self, num_tokens: int) -> int:
        """Free at least ``num_tokens`` unlocked slots if possible; returns how many were freed."""

    @abstractmethod
    def evictable_size(self) -> int: ...

    @abstractmethod
    def protected_size(self) -> int: ...

    def record_hit(self, handle: Any) -> None:
        """A request was admitted on the cached prefix ``handle`` (observability)."""
        del handle  # a cache without a tree keeps no hit counts

    def top_prefixes(self, k: int) -> tuple[int, list[tuple[list[int], int]]]:
        """(node count, up to ``k`` (prefix token ids, hits)); a cache without a tree has none."""
        return 0, []

    def total_size(self) -> int:
        return self.evictable_size() + self.protected_size()

    def cached_slots(self) -> torch.Tensor:
        """Every slot the cache owns (for leak checks)."""
        return torch.empty(0, dtype=torch.int64, device=self.allocator.device)

    def check_invariants(self) -> None:
        """Raise if the cache's internal bookkeeping is inconsistent (nothing to check here)."""
        return None

    @abstractmethod
    def reset(self) -> None:
        """Forget everything (the caller resets the allocator). Only valid when idle."""


class ChunkCache(PrefixCache):
    """No sharing: matches are empty and a finished request's slots go straight back."""

    @property
    def shares_prefixes(self) -> bool:
        return False

    def match_prefix(self, token_ids: list[int], namespace: Namespace = None) -> MatchResult:
        return MatchResult(torch.empty(0, dtype=torch.int64, device=self.allocator.device), None)

    def lock(self, handle: Any) -> int:
        return 0

    def unlock(self, handle: Any) -> int:
        return 0

    def cache_finished_req(self, req: Req, token_ids: list[int]) -> None:
        if req.kv_len:
            self.allocator.free(self.req_to_token_pool.read(req.req_pool_idx, req.kv_len))
        req.cache_protected_len = 0
        req.last_node = None

    def cache_unfinished_req(self, req: Req, token_ids: list[int]) -> None:
        pass  # the request keeps its private slots until it finishes

    def evict(self, num_tokens: int) -> int:
        return 0

    def evictable_size(self) -> int:
        return 0

    def protected_size(self) -> int:
        return 0

    def reset(self) -> None:
        pass


def create_prefix_cache(
    disable_radix_cache: bool, req_to_token_pool: ReqToTokenPool, allocator: SlotAllocator
) -> PrefixCache:
    """The one switch between sharing (radix tree) and no sharing; the scheduler never asks."""
    if disable_radix_cache:
        return ChunkCache(req_to_token_pool, allocator)
    from radixlm.mem.radix_cache import RadixCache  # NOTE: local import, radix_cache imports us

    return RadixCache(req_to_token_pool, allocator)


def check_idle_memory(
    allocator: SlotAllocator, cache: PrefixCache, req_to_token_pool: ReqToTokenPool
) -> None:
    """With no request live: every slot ``1..size`` is either free or cached (exactly once),
    nothing is locked, every request row is free."""
    allocator.check_consistency()
    cache.check_invariants()
    free, cached = allocator.available_size(), cache.total_size()
    if free + cached != allocator.size:
        raise RuntimeError(f"KV slot leak: free {free} + cached {cached} != pool {allocator.size}")
    owned = torch.cat((allocator.free_slots().cpu(), cache.cached_slots().cpu()))
    if torch.unique(owned).numel() != allocator.size:
        raise RuntimeError("KV slot owned twice: a cached slot is also on the free list")
    if cache.protected_size() != 0:
        raise RuntimeError("cache still holds locked tokens while idle")
    if req_to_token_pool.available_size() != req_to_token_pool.size:
        raise RuntimeError("request row leak in ReqToTokenPool")
