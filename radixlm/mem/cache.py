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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from radixlm.mem.kv_pool import SlotAllocator
    from radixlm.mem.req_to_token import ReqToTokenPool
    from radixlm.scheduler.req import Req


@dataclass
class MatchResult:
    slots: torch.Tensor  # [n] int64 KV slots of the longest cached prefix
    handle: Any  # cache node to lock while a request uses the prefix (None: nothing to lock)


class PrefixCache(ABC):
    def __init__(self, req_to_token_pool: ReqToTokenPool, allocator: SlotAllocator) -> None:
        self.req_to_token_pool = req_to_token_pool
        self.allocator = allocator

    @property
    def shares_prefixes(self) -> bool:
        """False for caches whose matches are always empty (policies fall back to FCFS)."""
        return True

    @abstractmethod
    def match_prefix(self, token_ids: list[int]) -> MatchResult: ...

    @abstractmethod
    def lock(self, handle: Any) -> None: ...

    @abstractmethod
    def unlock(self, handle: Any) -> None: ...

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

    def total_size(self) -> int:
        return self.evictable_size() + self.protected_size()

    @abstractmethod
    def reset(self) -> None:
        """Forget everything (the caller resets the allocator). Only valid when idle."""


class ChunkCache(PrefixCache):
    """No sharing: matches are empty and a finished request's slots go straight back."""

    @property
    def shares_prefixes(self) -> bool:
        return False

    def match_prefix(self, token_ids: list[int]) -> MatchResult:
        return MatchResult(torch.empty(0, dtype=torch.int64, device=self.allocator.device), None)

    def lock(self, handle: Any) -> None:
        pass

    def unlock(self, handle: Any) -> None:
        pass

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
    """The radix tree arrives in a later change; until then every config uses ChunkCache."""
    return ChunkCache(req_to_token_pool, allocator)


def check_idle_memory(
    allocator: SlotAllocator, cache: PrefixCache, req_to_token_pool: ReqToTokenPool
) -> None:
    """With no request live: ``free + cached == pool``, nothing locked, every row free."""
    allocator.check_consistency()
    free, cached = allocator.available_size(), cache.total_size()
    if free + cached != allocator.size:
        raise RuntimeError(f"KV slot leak: free {free} + cached {cached} != pool {allocator.size}")
    if cache.protected_size() != 0:
        raise RuntimeError("cache still holds locked tokens while idle")
    if req_to_token_pool.available_size() != req_to_token_pool.size:
        raise RuntimeError("request row leak in ReqToTokenPool")
