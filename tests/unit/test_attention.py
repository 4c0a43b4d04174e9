"""torch_native attention vs a naive per-request softmax(QK^T)V over the same KV pool."""

from __future__ import annotations

import pytest
import torch

from radixlm.attention.torch_native import TorchNativeBackend, length_buckets
from radixlm.engine.forward_batch import ForwardBatch, ForwardMode
from radixlm.mem.kv_pool import TokenToKVPool
from radixlm.mem.req_to_token import ReqToTokenPool

H, KVH, D = 6, 2, 8


class Layer:
    layer_id = 0
    num_heads = H
    num_kv_heads = KVH
    head_dim = D
    scaling = D**-0.5

    def __init__(self, window: int | None) -> None:
        self.sliding_window = window


def naive(q, keys, values, q_pos, window):
    """q: [E, H, D]; keys/values: [S, KVH, D] for positions 0..S-1."""
    group = H // KVH
    k = keys.repeat_interleave(group, dim=1)  # [S, H, D]
    v = values.repeat_interleave(group, dim=1)
    scores = torch.einsum("ehd,shd->hes", q, k) * D**-0.5
    s_pos = torch.arange(keys.shape[0])
    allowed = s_pos[None, :] <= q_pos[:, None]
    if window is not None:
        allowed &= s_pos[None, :] > q_pos[:, None] - window
    scores = scores.masked_fill(~allowed[None], float("-inf"))
    return torch.einsum("hes,shd->ehd", scores.softmax(-1), v).reshape(q.shape[0], H * D)


def setup(prefix_lens, extend_lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(p + e for p, e in zip(prefix_lens, extend_lens))
    kv = TokenToKVPool(total + 8, 1, KVH, D, torch.float32, "cpu")
    rows = ReqToTokenPool(len(prefix_lens), 512, "cpu")
    # scattered slots: a shuffled permutation, as after many alloc/free cycles
    perm = torch.randperm(total + 8, generator=g)[:total] + 1
    kv.k_buffers[0][1:] = torch.randn(total + 8, KVH, D, generator=g)
    kv.v_buffers[0][1:] = torch.randn(total + 8, KVH, D, generator=g)
    out_loc, off, full_slots = [], 0, []
    for p, e in zip(prefix_lens, extend_lens):
        row = rows.alloc()
        slots = perm[off : off + p + e]
        off += p + e
        rows.write(row, 0, slots)
        out_loc.append(slots[p:])
        full_slots.append((row, slots))
    n_new = sum(extend_lens)
    q = torch.randn(n_new, H, D, generator=g)
    k = torch.randn(n_new, KVH, D, generator=g)
    v = torch.randn(n_new, KVH, D, generator=g)
    seq = [p + e for p, e in zip(prefix_lens, extend_lens)]
    mode = (
        ForwardMode.DECODE
        if all(e == 1 for e in extend_lens) and any(prefix_lens)
        else ForwardMode.EXTEND
    )
    fb = ForwardBatch(
        mode=mode,
        input_ids=torch.zeros(n_new, dtype=torch.int64),
        positions=torch.cat([torch.arange(p, p + e) for p, e in zip(prefix_lens, extend_lens)]),
        out_cache_loc=torch.cat(out_loc),
        req_pool_indices=torch.tensor([r for r, _ in full_slots]),
        seq_lens=torch.tensor(seq),
        seq_lens_cpu=seq,
        extend_prefix_lens_cpu=list(prefix_lens),
        extend_seq_lens_cpu=list(extend_lens),
        req_to_token_pool=rows,
        kv_pool=kv,
    )
    return fb, q, k, v, full_slots


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize(
    "prefix_lens, extend_lens",
    [
        ([0, 0, 0], [1, 7, 13]),  # plain prefill
        ([4, 0, 11], [3, 9, 1]),  # prefill after a cached prefix
        ([10, 0, 50, 7, 33, 120], [100, 70, 2, 64, 1, 17]),  # batched small extends + singles
        ([3, 40, 7, 150, 90, 1, 300], [1] * 7),  # decode across several length buckets
    ],
)
def test_matches_naive(prefix_lens, extend_lens, window):
    fb, q, k, v, full = setup(prefix_lens, extend_lens)
    backend = TorchNativeBackend()
    backend.init_forward_metadata(fb)
    out = backend.forward(q, k, v, Layer(window), fb)
    off = 0
    for (_, slots), p, e in zip(full, prefix_lens, extend_lens):
        keys = fb.kv_pool.k_buffers[0][slots]  # includes the new K just written
        values = fb.kv_pool.v_buffers[0][slots]
        assert torch.equal(fb.kv_pool.k_buffers[0][slots[p:]], k[off : off + e])
        ref = naive(q[off : off + e], keys, values, torch.arange(p, p + e), window)
        torch.testing.assert_close(out[off : off + e], ref, atol=1e-5, rtol=1e-5)
        off += e


def test_length_buckets_partition_and_bound_padding():
    lens = [3, 40, 7, 150, 90, 1, 300, 1000, 999, 64]
    buckets = length_buckets(lens)
    assert sorted(i for b in buckets for i in b) == list(range(len(lens)))
    assert len(buckets) > 1
    for b in buckets:
        longest = max(lens[i] for i in b)
        for i in b:
            assert lens[i] >= 0.6 * longest or longest - lens[i] <= 64


def test_length_buckets_bound_the_gathered_block():
    lens = [500] * 40 + [9000]
    buckets = length_buckets(lens, max_tokens=4096)
    assert sorted(i for b in buckets for i in b) == list(range(len(lens)))
    for b in buckets:  # a single request longer than the budget still gets its own bucket
        assert len(b) == 1 or len(b) * max(lens[i] for i in b) <= 4096
