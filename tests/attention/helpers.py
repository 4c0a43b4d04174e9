"""Builders shared by the attention tests: a KV pool with scattered slots and its ForwardBatch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radixlm.engine.forward_batch import ForwardBatch, ForwardMode
from radixlm.mem.kv_pool import TokenToKVPool
from radixlm.mem.req_to_token import ReqToTokenPool


@dataclass
class Layer:
    """An ``AttentionLayerSpec``."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    sliding_window: int | None = None
    layer_id: int = 0
    scaling: float | None = None

    def __post_init__(self) -> None:
        if self.scaling is None:
            self.scaling = self.head_dim**-0.5


@dataclass
class Batch:
    fb: ForwardBatch
    q: torch.Tensor  # [T, H, D]
    k: torch.Tensor  # [T, KVH, D]
    v: torch.Tensor
    rows: list[int]  # ReqToTokenPool row per request
    slots: list[torch.Tensor]  # every KV slot of each request, in position order


def build_batch(
    prefix_lens: list[int],
    extend_lens: list[int],
    layer: Layer,
    *,
    decode: bool | None = None,
    kv_dtype: torch.dtype = torch.float32,
    q_dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
    spare_rows: int = 2,
    pool_size: int | None = None,
) -> Batch:
    """Random K/V for every prefix token in a pool whose slots are a shuffled permutation (as
    after many alloc/free cycles), rows of ``req_to_token`` not in batch order, random new q/k/v.
    ``decode`` defaults to "every request adds exactly one token after a prefix"."""
    g = torch.Generator().manual_seed(seed)
    seq = [p + e for p, e in zip(prefix_lens, extend_lens)]
    total = sum(seq)
    size = pool_size or total + 8
    kvh, d = layer.num_kv_heads, layer.head_dim
    pool = TokenToKVPool(size, layer.layer_id + 1, kvh, d, kv_dtype, device)
    table = ReqToTokenPool(len(seq) + spare_rows, max(seq) + 4, device)
    assert size >= total
    perm = torch.randperm(size, generator=g)[:total] + 1
    pool.k_buffers[layer.layer_id][1:] = torch.randn(size, kvh, d, generator=g).to(kv_dtype)
    pool.v_buffers[layer.layer_id][1:] = torch.randn(size, kvh, d, generator=g).to(kv_dtype)
    # garbage past each row's length must never be read
    table.req_to_token.fill_(size + 1000)
    rows, slots, out_loc, off = [], [], [], 0
    for _ in range(spare_rows):
        table.alloc()  # rows of the batch are then not 0..B-1
    for p, e in zip(prefix_lens, extend_lens):
        row = table.alloc()
        s = perm[off : off + p + e].to(device)
        off += p + e
        table.write(row, 0, s)
        rows.append(row)
        slots.append(s)
        out_loc.append(s[p:])
    n = sum(extend_lens)
    q = torch.randn(n, layer.num_heads, d, generator=g).to(device=device, dtype=q_dtype)
    k = torch.randn(n, kvh, d, generator=g).to(device=device, dtype=q_dtype)
    v = torch.randn(n, kvh, d, generator=g).to(device=device, dtype=q_dtype)
    if decode is None:
        decode = all(e == 1 for e in extend_lens) and any(prefix_lens)
    fb = ForwardBatch(
        mode=ForwardMode.DECODE if decode else ForwardMode.EXTEND,
        input_ids=torch.zeros(n, dtype=torch.int64, device=device),
        positions=torch.cat([torch.arange(p, p + e) for p, e in zip(prefix_lens, extend_lens)]).to(
            device
        ),
        out_cache_loc=torch.cat(out_loc).long(),
        req_pool_indices=torch.tensor(rows, dtype=torch.int64, device=device),
        seq_lens=torch.tensor(seq, dtype=torch.int64, device=device),
        seq_lens_cpu=seq,
        extend_prefix_lens_cpu=list(prefix_lens),
        extend_seq_lens_cpu=list(extend_lens),
        req_to_token_pool=table,
        kv_pool=pool,
    )
    return Batch(fb, q, k, v, rows, slots)


def clone_batch(batch: Batch) -> Batch:
    """The same batch over a deep copy of the KV pool (so two backends can each write K/V)."""
    fb = batch.fb
    pool = fb.kv_pool
    new_pool = TokenToKVPool.__new__(TokenToKVPool)
    new_pool.__dict__.update(pool.__dict__)
    new_pool.k_buffers = [b.clone() for b in pool.k_buffers]
    new_pool.v_buffers = [b.clone() for b in pool.v_buffers]
    new_fb = ForwardBatch(**{**fb.__dict__, "kv_pool": new_pool, "attn_metadata": None})
    return Batch(new_fb, batch.q, batch.k, batch.v, batch.rows, batch.slots)
