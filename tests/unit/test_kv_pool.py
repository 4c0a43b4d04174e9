"""KV slot allocator, request-to-token rows and per-layer K/V buffers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from radixlm.errors import CapacityError
from radixlm.mem.kv_pool import SlotAllocator, TokenToKVPool
from radixlm.mem.req_to_token import ReqToTokenPool

# ---- SlotAllocator ------------------------------------------------------------------------


def test_hands_out_every_slot_but_zero() -> None:
    a = SlotAllocator(8, "cpu")
    slots = a.alloc(8)
    assert slots is not None and slots.dtype == torch.int64
    assert sorted(slots.tolist()) == list(range(1, 9))
    assert a.available_size() == 0
    assert a.alloc(1) is None


def test_alloc_when_short_returns_none_and_keeps_state() -> None:
    a = SlotAllocator(5, "cpu")
    held = a.alloc(3)
    assert a.alloc(3) is None
    assert a.available_size() == 2
    rest = a.alloc(2)
    assert sorted(held.tolist() + rest.tolist()) == [1, 2, 3, 4, 5]


def test_alloc_zero_is_empty_not_none() -> None:
    a = SlotAllocator(2, "cpu")
    out = a.alloc(0)
    assert out is not None and out.numel() == 0
    assert a.available_size() == 2


def test_round_trip_keeps_available_size() -> None:
    a = SlotAllocator(10, "cpu")
    x, y = a.alloc(4), a.alloc(3)
    assert a.available_size() == 3
    a.free(x)
    assert a.available_size() == 7
    a.free(torch.empty(0, dtype=torch.int64))
    assert a.available_size() == 7
    a.free(y.to(torch.int32))  # any integer dtype comes back as int64
    assert a.available_size() == 10
    assert a.free_slots().dtype == torch.int64
    a.check_consistency()
    assert sorted(a.alloc(10).tolist()) == list(range(1, 11))


def test_clear_restores_all_slots() -> None:
    a = SlotAllocator(6, "cpu")
    a.alloc(5)
    a.clear()
    assert a.available_size() == 6
    assert sorted(a.free_slots().tolist()) == list(range(1, 7))


def test_check_consistency_raises_on_double_free() -> None:
    a = SlotAllocator(6, "cpu")
    slots = a.alloc(3)
    a.free(slots)
    a.check_consistency()
    a.free(slots[:1])
    with pytest.raises(RuntimeError, match="twice"):
        a.check_consistency()


@pytest.mark.parametrize("bad", [0, 7, -1])
def test_check_consistency_raises_on_out_of_range_slot(bad: int) -> None:
    a = SlotAllocator(6, "cpu")
    a.alloc(6)
    a.free(torch.tensor([bad]))
    with pytest.raises(RuntimeError, match="out-of-range"):
        a.check_consistency()


class AllocatorMachine(RuleBasedStateMachine):
    """Random alloc/free sequences: the free list and held slots partition ``1..size``."""

    size = 16

    def __init__(self) -> None:
        super().__init__()
        self.alloc = SlotAllocator(self.size, "cpu")
        self.held: list[int] = []

    @rule(n=st.integers(0, 20))
    def allocate(self, n: int) -> None:
        before = self.alloc.available_size()
        out = self.alloc.alloc(n)
        if n > before:
            assert out is None
            assert self.alloc.available_size() == before
        else:
            assert out is not None and out.numel() == n
            self.held += out.tolist()

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        chosen = data.draw(st.lists(st.sampled_from(self.held), unique=True, min_size=1))
        self.alloc.free(torch.tensor(chosen))
        self.held = [s for s in self.held if s not in chosen]

    @rule()
    def clear(self) -> None:
        self.alloc.clear()
        self.held = []

    @invariant()
    def partition(self) -> None:
        free = self.alloc.free_slots().tolist()
        assert len(free) == self.alloc.available_size() == self.size - len(self.held)
        assert not set(free) & set(self.held)
        assert len(set(self.held)) == len(self.held)
        assert set(free) | set(self.held) == set(range(1, self.size + 1))
        self.alloc.check_consistency()


TestAllocatorMachine = AllocatorMachine.TestCase
TestAllocatorMachine.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None, derandomize=True, database=None
)


# ---- ReqToTokenPool -----------------------------------------------------------------------


def test_req_pool_alloc_free() -> None:
    pool = ReqToTokenPool(3, 16, "cpu")
    rows = {pool.alloc() for _ in range(3)}
    assert rows == {0, 1, 2}
    assert pool.available_size() == 0
    with pytest.raises(CapacityError):
        pool.alloc()
    pool.free(1)
    assert pool.available_size() == 1
    assert pool.alloc() == 1
    pool.clear()
    assert pool.available_size() == 3


@pytest.mark.parametrize("row", [-1, 3])
def test_req_pool_bad_row(row: int) -> None:
    pool = ReqToTokenPool(3, 16, "cpu")
    pool.alloc()
    with pytest.raises(RuntimeError, match="bad row"):
        pool.free(row)


def test_req_pool_double_free() -> None:
    pool = ReqToTokenPool(2, 16, "cpu")
    r = pool.alloc()
    pool.free(r)
    with pytest.raises(RuntimeError, match="double free"):
        pool.free(r)
    assert pool.available_size() == 2


def test_req_pool_write_read() -> None:
    pool = ReqToTokenPool(2, 16, "cpu")
    r = pool.alloc()
    pool.write(r, 0, torch.tensor([5, 6, 7]))
    pool.write(r, 3, torch.tensor([9, 2]))
    out = pool.read(r, 5)
    assert out.dtype == torch.int64 and out.tolist() == [5, 6, 7, 9, 2]
    assert pool.read(r, 4, start=2).tolist() == [7, 9]


# ---- TokenToKVPool ------------------------------------------------------------------------


def make_pool(dtype: torch.dtype = torch.float32) -> TokenToKVPool:
    return TokenToKVPool(
        size=8, num_layers=3, num_kv_heads=2, head_dim=4, dtype=dtype, device="cpu"
    )


def test_kv_pool_shapes_and_zero_padding_slot() -> None:
    pool = make_pool()
    assert len(pool.k_buffers) == len(pool.v_buffers) == 3
    for buf in (*pool.k_buffers, *pool.v_buffers):
        assert buf.shape == (9, 2, 4)
        assert torch.count_nonzero(buf[0]) == 0
    assert pool.allocator.available_size() == 8


def test_set_kv_writes_given_slots_only() -> None:
    pool = make_pool(torch.bfloat16)
    for buf in (*pool.k_buffers, *pool.v_buffers):
        buf[1:].fill_(-7.0)
    slots = torch.tensor([5, 2])
    k = torch.arange(16, dtype=torch.float32).reshape(2, 2, 4)
    v = -k
    pool.set_kv(1, slots, k, v)
    assert pool.k_buffers[1].dtype == torch.bfloat16
    assert torch.equal(pool.k_buffers[1][slots].float(), k)
    assert torch.equal(pool.v_buffers[1][slots].float(), v)
    untouched = [1, 3, 4, 6, 7, 8]
    assert torch.all(pool.k_buffers[1][untouched] == -7.0)
    assert torch.count_nonzero(pool.k_buffers[1][0]) == 0
    for layer in (0, 2):
        assert torch.all(pool.k_buffers[layer][1:] == -7.0)
        assert torch.all(pool.v_buffers[layer][1:] == -7.0)


def test_bytes_per_token() -> None:
    assert TokenToKVPool.bytes_per_token(3, 2, 4, torch.float32) == 2 * 3 * 2 * 4 * 4
    assert TokenToKVPool.bytes_per_token(3, 2, 4, torch.bfloat16) == 2 * 3 * 2 * 4 * 2
