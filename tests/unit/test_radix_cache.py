"""RadixCache against a naive model: a dict from every cached (namespace, token prefix) to the
KV slot of its last token. Random operation sequences must keep the tree and the model in
agreement, keep every invariant, and never lose or double-own a slot."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from radixlm.mem.kv_pool import SlotAllocator
from radixlm.mem.radix_cache import RadixCache, common_prefix_len
from radixlm.mem.req_to_token import ReqToTokenPool

POOL = 200


def make_cache(size: int = POOL) -> RadixCache:
    return RadixCache(ReqToTokenPool(4, 64, "cpu"), SlotAllocator(size, "cpu"))


def tree_contents(cache: RadixCache) -> dict[tuple, int]:
    """Every cached (namespace, prefix) → slot of the prefix's last token."""
    out: dict[tuple, int] = {}
    stack = [(child, ()) for child in cache.root.children.values()]
    while stack:
        node, prefix = stack.pop()
        for tok, slot in zip(node.key, node.value.tolist()):
            prefix = prefix + (tok,)
            out[(node.namespace, prefix)] = slot
        stack.extend((child, prefix) for child in node.children.values())
    return out


class Model:
    def __init__(self) -> None:
        self.cached: dict[tuple, int] = {}
        self.locks: list[tuple] = []  # (namespace, prefix) of every held lock

    def match(self, ns, key) -> list[int]:
        out = []
        for j in range(1, len(key) + 1):
            slot = self.cached.get((ns, tuple(key[:j])))
            if slot is None:
                break
            out.append(slot)
        return out

    def protected(self) -> set[tuple]:
        return {(ns, p[:j]) for ns, p in self.locks for j in range(1, len(p) + 1)}


def evict_and_check(cache: RadixCache, model: Model, want: int) -> None:
    before = tree_contents(cache)
    free_before = cache.allocator.available_size()
    freed = cache.evict(want)
    after = tree_contents(cache)
    removed = set(before) - set(after)
    assert set(after) <= set(before)
    assert len(removed) == freed == cache.allocator.available_size() - free_before
    assert not removed & model.protected(), "evicted a locked prefix"
    if freed < want:  # everything unlocked is gone
        assert set(after) == model.protected() & set(before)
    for k in removed:
        del model.cached[k]


def run_ops(seed: int, num_ops: int) -> None:
    rng = random.Random(seed)
    cache, model = make_cache(), Model()
    alloc = cache.allocator
    held = []  # (handle, namespace, prefix) of locks the "requests" hold
    private: list[torch.Tensor] = []  # slots owned by nobody but a simulated running request
    for _ in range(num_ops):
        op = rng.random()
        ns = rng.choice([None, None, "tenant-b"])
        key = [rng.randrange(4) for _ in range(rng.randint(1, 10))]
        if op < 0.45:  # a request: match, lock, compute the rest, insert, free duplicates
            m = cache.match_prefix(key, ns)
            expect = model.match(ns, key)
            assert m.slots.tolist() == expect
            cache.lock(m.handle)
            fresh = alloc.alloc(len(key) - len(expect))
            if fresh is None:
                evict_and_check(cache, model, len(key) - len(expect) - alloc.available_size())
                fresh = alloc.alloc(len(key) - len(expect))
            if fresh is None:  # pool full of locked/private slots
                cache.unlock(m.handle)
                continue
            row = torch.cat((m.slots, fresh))
            existing = cache.insert(key, row, ns)
            assert existing == len(expect)  # nothing else ran in between
            for j in range(len(expect), len(key)):
                model.cached[(ns, tuple(key[: j + 1]))] = int(row[j])
            cache.unlock(m.handle)
        elif op < 0.55:  # a chunked insert racing with a duplicate: caller frees its copies
            m = cache.match_prefix(key, ns)
            mine = alloc.alloc(len(key))
            if mine is None:
                continue
            existing = cache.insert(key, mine, ns)
            assert existing == len(m.slots)
            alloc.free(mine[:existing])
            for j in range(existing, len(key)):
                model.cached[(ns, tuple(key[: j + 1]))] = int(mine[j])
        elif op < 0.70:  # lock a matched prefix and keep it locked for a while
            m = cache.match_prefix(key, ns)
            cache.lock(m.handle)
            held.append((m.handle, ns, tuple(key[: len(m.slots)])))
            model.locks.append((ns, tuple(key[: len(m.slots)])))
        elif op < 0.80 and held:
            i = rng.randrange(len(held))
            handle, hns, prefix = held.pop(i)
            cache.unlock(handle)
            model.locks.remove((hns, prefix))
        elif op < 0.85:  # a running request's private tail, then its release
            if private and rng.random() < 0.5:
                alloc.free(private.pop())
            else:
                slots = alloc.alloc(rng.randint(1, 5))
                if slots is not None:
                    private.append(slots)
        else:
            evict_and_check(cache, model, rng.randint(1, 30))
        # invariants after every operation
        cache.check_invariants()
        assert tree_contents(cache) == model.cached
        protected = model.protected() & set(model.cached)
        assert cache.protected_size() == len(protected)
        assert cache.evictable_size() == len(model.cached) - len(protected)
        owned = [alloc.free_slots(), cache.cached_slots(), *private]
        everything = torch.cat(owned)
        assert everything.numel() == POOL, "a slot was lost or double-owned"
        assert torch.equal(torch.sort(everything).values, torch.arange(1, POOL + 1))


@settings(max_examples=3, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1))
def test_random_operations_match_naive_model(seed: int) -> None:
    run_ops(seed, num_ops=2500)


def test_common_prefix_len() -> None:
    a = list(range(300))
    assert common_prefix_len(a, a, 0) == 300
    assert common_prefix_len(a, [9] + a, 1) == 300
    b = a[:130] + [-1] + a[131:]
    assert common_prefix_len(a, b, 0) == 130
    assert common_prefix_len(a, a[:50], 0) == 50
    assert common_prefix_len([1, 2], [0, 1, 3], 1) == 1


def test_match_splits_node_and_insert_reports_existing() -> None:
    cache = make_cache()
    slots = cache.allocator.alloc(6)
    assert cache.insert([1, 2, 3, 4, 5, 6], slots) == 0
    m = cache.match_prefix([1, 2, 3, 9])
    assert m.slots.tolist() == slots[:3].tolist()
    assert m.handle.key == [1, 2, 3] and m.handle.children[4].key == [4, 5, 6]
    more = cache.allocator.alloc(5)
    assert cache.insert([1, 2, 3, 7, 8], more) == 3  # caller frees more[:3]
    cache.allocator.free(more[:3])
    assert cache.evictable_size() == 8 and cache.protected_size() == 0
    cache.check_invariants()


def test_lock_protects_path_and_evict_is_lru() -> None:
    cache = make_cache()
    for key in ([1, 1, 1], [2, 2, 2], [3, 3, 3]):
        cache.insert(key, cache.allocator.alloc(3))
    cache.match_prefix([1, 1, 1])  # [1,1,1] is now the most recently used
    assert cache.evict(3) == 3
    assert cache.match_prefix([2, 2, 2]).slots.numel() == 0  # the oldest went first
    m = cache.match_prefix([3, 3, 3])
    assert cache.lock(m.handle) == 3
    assert cache.evict(100) == 3  # only [1,1,1] is evictable
    assert cache.match_prefix([3, 3, 3]).slots.numel() == 3
    assert cache.unlock(m.handle) == 3
    assert cache.evict(100) == 3 and cache.total_size() == 0
    assert cache.allocator.available_size() == POOL
    cache.check_invariants()


def test_evict_cascades_to_parent() -> None:
    cache = make_cache()
    cache.insert([5, 6, 7], cache.allocator.alloc(3))
    mine = cache.allocator.alloc(5)
    assert cache.insert([5, 6, 7, 8, 9], mine) == 3
    cache.allocator.free(mine[:3])
    # [5,6,7] -> [8,9]: only the leaf is evictable until it is gone, then its parent is
    assert cache.evict(1) == 2
    assert cache.evict(1) == 3
    assert cache.total_size() == 0 and cache.allocator.available_size() == POOL
    cache.check_invariants()


def test_namespaces_never_share() -> None:
    cache = make_cache()
    cache.insert([1, 2, 3], cache.allocator.alloc(3), "a")
    assert cache.match_prefix([1, 2, 3], "b").slots.numel() == 0
    assert cache.match_prefix([1, 2, 3]).slots.numel() == 0
    assert cache.match_prefix([1, 2, 3], "a").slots.numel() == 3
    assert cache.insert([1, 2, 3], cache.allocator.alloc(3), None) == 0
    cache.check_invariants()


def test_unlock_without_lock_raises() -> None:
    cache = make_cache()
    cache.insert([1, 2], cache.allocator.alloc(2))
    with pytest.raises(RuntimeError, match="unlock"):
        cache.unlock(cache.match_prefix([1, 2]).handle)
