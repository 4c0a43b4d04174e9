"""metadata.py vs plain-Python references (lists built request by request)."""

from __future__ import annotations

import random

import pytest
import torch

from radixlm.attention.metadata import (
    PagedKVIndex,
    build_paged_kv_index,
    pad_decode_index,
    pad_decode_index_into,
    padded_indptr_cpu,
)
from tests.attention.helpers import Layer, build_batch

LAYER = Layer(num_heads=2, num_kv_heads=1, head_dim=4)


def reference(batch) -> tuple[list[int], list[int], list[int]]:
    fb = batch.fb
    table = fb.req_to_token_pool.req_to_token.tolist()
    indptr, indices, qo = [0], [], [0]
    for row, seq, ext in zip(batch.rows, fb.seq_lens_cpu, fb.extend_seq_lens_cpu):
        indices += table[row][:seq]
        indptr.append(indptr[-1] + seq)
        qo.append(qo[-1] + ext)
    return indptr, indices, qo


def check(index: PagedKVIndex, batch, extend: bool) -> None:
    indptr, indices, qo = reference(batch)
    assert index.kv_indptr.dtype == index.kv_indices.dtype == torch.int32
    assert index.kv_indptr.tolist() == indptr == index.kv_indptr_cpu
    assert index.kv_indices.tolist() == indices
    # every index is a real slot of its request, in position order
    assert index.kv_indices.tolist() == torch.cat(batch.slots).tolist()
    if extend:
        assert index.qo_indptr.dtype == torch.int32
        assert index.qo_indptr.tolist() == qo == index.qo_indptr_cpu
    else:
        assert index.qo_indptr is None


@pytest.mark.parametrize("seed", range(5))
def test_random_extend_batches(seed):
    rng = random.Random(seed)
    b = rng.randint(1, 6)
    prefix = [rng.choice([0, 0, rng.randint(1, 30)]) for _ in range(b)]  # many zero prefixes
    ext = [rng.randint(1, 20) for _ in range(b)]
    batch = build_batch(prefix, ext, LAYER, decode=False, seed=seed)
    check(build_paged_kv_index(batch.fb), batch, extend=True)


@pytest.mark.parametrize("seed", range(5))
def test_random_decode_batches(seed):
    rng = random.Random(100 + seed)
    b = rng.randint(1, 7)
    prefix = [rng.randint(1, 40) for _ in range(b)]
    batch = build_batch(prefix, [1] * b, LAYER, seed=seed)
    check(build_paged_kv_index(batch.fb), batch, extend=False)


def test_batch_of_one_without_prefix():
    batch = build_batch([0], [5], LAYER)
    index = build_paged_kv_index(batch.fb)
    check(index, batch, extend=True)
    assert index.kv_indptr.tolist() == [0, 5] and index.qo_indptr.tolist() == [0, 5]


def test_index_is_a_snapshot():
    batch = build_batch([3, 4], [1, 1], LAYER)
    index = build_paged_kv_index(batch.fb)
    before = index.kv_indices.clone()
    batch.fb.req_to_token_pool.req_to_token.fill_(-7)  # scheduler rewrites rows for the next step
    assert torch.equal(index.kv_indices, before)


def reference_padding(indptr: list[int], indices: list[int], padded_bs: int):
    indptr, indices = list(indptr), list(indices)
    while len(indptr) - 1 < padded_bs:
        indptr.append(indptr[-1] + 1)
        indices.append(0)
    return indptr, indices


@pytest.mark.parametrize("b, padded_bs", [(1, 1), (1, 4), (3, 8), (5, 5)])
def test_graph_padding(b, padded_bs):
    rng = random.Random(b * 31 + padded_bs)
    batch = build_batch([rng.randint(1, 25) for _ in range(b)], [1] * b, LAYER)
    index = build_paged_kv_index(batch.fb)
    want_indptr, want_indices = reference_padding(
        index.kv_indptr_cpu, index.kv_indices.tolist(), padded_bs
    )
    padded = pad_decode_index(index, padded_bs)
    assert padded.kv_indptr.tolist() == want_indptr == padded.kv_indptr_cpu
    assert padded.kv_indices.tolist() == want_indices
    assert padded_indptr_cpu(index.kv_indptr_cpu, padded_bs) == want_indptr

    # the in-place variant writes a prefix of larger static buffers, leaving the rest alone
    max_bs, max_tokens = 10, 400
    indptr_buf = torch.full((max_bs + 1,), -1, dtype=torch.int32)
    indices_buf = torch.full((max_tokens,), -1, dtype=torch.int32)
    arange = torch.arange(max_bs + 1, dtype=torch.int32)
    pad_decode_index_into(index, padded_bs, indptr_buf, indices_buf, arange)
    assert indptr_buf[: padded_bs + 1].tolist() == want_indptr
    assert indptr_buf[padded_bs + 1 :].eq(-1).all()
    assert indices_buf[: len(want_indices)].tolist() == want_indices
    assert indices_buf[len(want_indices) :].eq(-1).all()


def test_padding_rejects_small_buffers_and_shrinking():
    batch = build_batch([9, 9], [1, 1], LAYER)
    index = build_paged_kv_index(batch.fb)
    with pytest.raises(ValueError, match="smaller than the batch"):
        pad_decode_index(index, 1)
    small = torch.zeros(8, dtype=torch.int32)
    with pytest.raises(ValueError, match="max_kv_tokens"):
        pad_decode_index_into(index, 4, torch.zeros(5, dtype=torch.int32), small, small)
