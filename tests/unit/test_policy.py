"""Waiting-queue order of every schedule policy, in-batch prefix deferral, and aging."""

from __future__ import annotations

import random

from radixlm.mem.cache import ChunkCache
from radixlm.mem.kv_pool import SlotAllocator
from radixlm.mem.radix_cache import RadixCache
from radixlm.mem.req_to_token import ReqToTokenPool
from radixlm.sampling_params import SamplingParams
from radixlm.scheduler.policy import IN_BATCH_PREFIX_TOKENS, order_waiting_queue
from radixlm.scheduler.req import Req


def make_req(name: str, ids: list[int], arrival: float, max_new: int = 16) -> Req:
    return Req(
        rid=name,
        origin_input_ids=ids,
        sampling=SamplingParams.from_dict({"max_new_tokens": max_new}),
        max_new_tokens=max_new,
        stop_ids=(),
        arrival=arrival,
    )


def cache_with(*keys: list[int]) -> RadixCache:
    cache = RadixCache(ReqToTokenPool(2, 256, "cpu"), SlotAllocator(1000, "cpu"))
    for key in keys:
        m = cache.match_prefix(key)
        slots = cache.allocator.alloc(len(key))
        cache.allocator.free(slots[: cache.insert(key, slots)])
        assert len(m.slots) <= len(key)
    return cache


def names(reqs: list[Req]) -> list[str]:
    return [r.rid for r in reqs]


HOT = list(range(100, 120))  # 20 cached tokens


def test_lpm_longest_match_first_then_arrival() -> None:
    cache = cache_with(HOT)
    waiting = [
        make_req("cold", [1, 2, 3], 0),
        make_req("warm", HOT[:6] + [9, 9], 1),
        make_req("hot", HOT + [5], 2),
        make_req("hot2", HOT + [6], 3),
    ]
    matches, deferred = order_waiting_queue(waiting, "lpm", cache, random.Random(0))
    assert names(waiting) == ["hot", "hot2", "warm", "cold"]
    assert len(matches[id(waiting[0])].slots) == 20 and not deferred


def test_cache_agnostic_policies() -> None:
    cache = cache_with(HOT)
    reqs = [make_req(f"r{i}", HOT + [i], arrival=10 - i, max_new=4 * i + 1) for i in range(6)]
    waiting = list(reqs)
    order_waiting_queue(waiting, "fcfs", cache, random.Random(0))
    assert names(waiting) == ["r5", "r4", "r3", "r2", "r1", "r0"]
    order_waiting_queue(waiting, "lof", cache, random.Random(0))
    assert names(waiting) == ["r5", "r4", "r3", "r2", "r1", "r0"]
    reqs[0].max_new_tokens = 1000
    order_waiting_queue(waiting, "lof", cache, random.Random(0))
    assert names(waiting)[0] == "r0"
    orders = set()
    for seed in range(5):
        waiting = list(reqs)
        order_waiting_queue(waiting, "random", cache, random.Random(seed))
        assert sorted(names(waiting)) == sorted(names(reqs))
        orders.add(tuple(names(waiting)))
    assert len(orders) > 1
    again = list(reqs)
    order_waiting_queue(again, "random", cache, random.Random(0))
    first = list(reqs)
    order_waiting_queue(first, "random", cache, random.Random(0))
    assert names(again) == names(first)  # seeded: reproducible


def test_cache_aware_policies_fall_back_to_fcfs() -> None:
    chunk = ChunkCache(ReqToTokenPool(2, 64, "cpu"), SlotAllocator(10, "cpu"))
    waiting = [make_req("b", [1, 2], 2), make_req("a", [1, 2, 3], 1)]
    matches, _ = order_waiting_queue(waiting, "lpm", chunk, random.Random(0))
    assert names(waiting) == ["a", "b"] and matches == {}
    cache = cache_with(HOT)
    shared = list(range(300, 300 + IN_BATCH_PREFIX_TOKENS + 8))
    many = [make_req(f"q{i}", [1, i] if i % 2 else shared + [i], arrival=i) for i in range(200)]
    many.reverse()
    matches, deferred = order_waiting_queue(many, "lpm", cache, random.Random(0))
    # > 128 waiting: arrival order (no lpm sort), matching only the first 128; among those the
    # requests waiting for q0's shared prefix are deferred behind the head's other requests.
    assert len(matches) == 128
    assert names(many)[:3] == ["q0", "q1", "q3"]
    assert {r.rid for r in many if id(r) in deferred} == {f"q{i}" for i in range(2, 128, 2)}
    assert names(many)[64:67] == ["q127", "q2", "q4"] and names(many)[128] == "q128"


def test_dfs_weight_groups_by_heaviest_subtree() -> None:
    a = list(range(1, 11))
    b = list(range(50, 61))
    cache = cache_with(a + [11, 12], b + [70], b + [80])
    waiting = [
        make_req("a-deep", a + [11, 12, 13], 0),
        make_req("cold", [900, 901], 1),
        make_req("b1", b + [70, 1], 2),
        make_req("a", a + [99], 3),
        make_req("b2", b + [80, 1], 4),
        make_req("b3", b + [99], 5),
    ]
    order_waiting_queue(waiting, "dfs-weight", cache, random.Random(0))
    order = names(waiting)
    # the b subtree (3 requests) before the a subtree (2); a node's subtree before the node
    # itself; requests without any match last.
    assert order.index("b3") > max(order.index("b1"), order.index("b2"))
    assert max(order.index(n) for n in ("b1", "b2", "b3")) < order.index("a-deep")
    assert order.index("a-deep") < order.index("a") < order.index("cold")


def test_in_batch_prefix_deferral() -> None:
    cache = cache_with(HOT)
    shared = list(range(300, 300 + IN_BATCH_PREFIX_TOKENS + 8))
    waiting = [
        make_req("lead", shared + [1], 0),
        make_req("follow1", shared + [2], 1),
        make_req("other", [7] * 10, 2),
        make_req("follow2", shared + [3], 3),
        make_req("short", shared[:10] + [4], 4),  # shares too little to wait for anyone
        make_req("long-tail", shared + list(range(600, 700)), 5),  # shared part < half its work
    ]
    _, deferred = order_waiting_queue(waiting, "lpm", cache, random.Random(0))
    assert names(waiting) == ["lead", "other", "short", "long-tail", "follow1", "follow2"]
    assert deferred == {id(r) for r in waiting if r.rid.startswith("follow")}
    waiting2 = list(waiting)
    _, deferred2 = order_waiting_queue(waiting2, "dfs-weight", cache, random.Random(0))
    assert names(waiting2)[-2:] == ["follow1", "follow2"] and deferred2 == deferred


def test_lpm_aging_bounds_the_wait_of_a_cache_miss() -> None:
    cache = cache_with(HOT)
    cold = make_req("cold", [1, 2, 3], 0)
    for policy in ("lpm", "dfs-weight"):
        cold.waiting_passes = 0
        for passes in range(1, 10):
            waiting = [cold, make_req("hot", HOT + [passes], passes)]
            order_waiting_queue(waiting, policy, cache, random.Random(0), aging=8)
            # 20 matched tokens / 8 per pass: the cold request leads from its fourth pass on
            # (passes before this one: 3 × 8 = 24 > 20)
            assert (waiting[0] is cold) == (passes >= 4), (policy, passes)
        cold.waiting_passes = 0
        for _ in range(20):  # without aging the cold request never leads
            waiting = [cold, make_req("hot", HOT + [1], 99)]
            order_waiting_queue(waiting, policy, cache, random.Random(0), aging=0)
            assert waiting[0] is not cold


def test_followers_of_a_chunked_prefill_wait_for_its_last_chunk() -> None:
    doc = list(range(1000, 1200))  # a long shared document, prefilled in chunks
    cache = cache_with(doc[:64])  # the first chunk is already in the tree
    chunked = make_req("chunked", doc + [1], 0)
    waiting = [
        make_req("follower", doc + [2], 1),  # shares 136 uncached tokens with the chunked one
        make_req("other", [5] * 40, 2),
        make_req("salted", doc + [3], 3),
        make_req("short-share", doc[:70] + list(range(1, 100)), 4),  # shares only 6 uncached
    ]
    waiting[2].cache_namespace = (None, "tenant")
    _, deferred = order_waiting_queue(waiting, "lpm", cache, random.Random(0), chunked=chunked)
    assert {r.rid for r in waiting if id(r) in deferred} == {"follower"}
    assert names(waiting)[-1] == "follower"
    _, none = order_waiting_queue(list(waiting), "lpm", cache, random.Random(0))
    assert not any(r.rid == "follower" for r in waiting if id(r) in none)
