"""Paged-KV index construction shared by the GPU attention backends (triton, flashinfer).

Everything here is pure torch, device-agnostic and vectorised: no Python loop over tokens or
requests, and no host sync. Sizes come from the host-side length lists of the ``ForwardBatch``
(``seq_lens_cpu``, ``extend_seq_lens_cpu``), never from reading device tensors back.

Layout (CSR, page size 1), for a batch of ``B`` requests:
- ``kv_indptr``  int32 ``[B + 1]``: request ``i`` owns ``kv_indices[kv_indptr[i]:kv_indptr[i+1]]``.
- ``kv_indices`` int32 ``[sum(seq_lens)]``: the KV slot of every token (cached prefix and new
  tokens) of each request, in position order, copied out of ``req_to_token`` (a snapshot:
  later rewrites of the table do not change it).
- ``qo_indptr``  int32 ``[B + 1]`` (extend only): request ``i``'s new tokens are rows
  ``qo_indptr[i]:qo_indptr[i+1]`` of the token-major query tensor.

Graph padding (decode): a batch of ``b`` requests is padded to ``padded_bs`` rows; padding rows
are requests of KV length 1 whose single token reads slot 0 (the pool's padding slot), so
the kernels never see an empty request and never read garbage.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from radixlm.engine.forward_batch import ForwardBatch
from radixlm.engine.transfer import to_device


@dataclass
class PagedKVIndex:
    """Snapshot of one step's paged-KV indices (device tensors plus host copies of the sizes).

    Invariants: ``kv_indptr_cpu == kv_indptr.tolist()`` and ``kv_indices.numel() ==
    kv_indptr_cpu[-1]``; likewise for ``qo_indptr`` when present.
    """

    kv_indptr: torch.Tensor  # [B + 1] int32, device
    kv_indices: torch.Tensor  # [sum(seq_lens)] int32, device
    kv_indptr_cpu: list[int]  # [B + 1], host copy (flashinfer plans from host indptr)
    qo_indptr: torch.Tensor | None = None  # [B + 1] int32, device (extend only)
    qo_indptr_cpu: list[int] | None = None

    @property
    def batch_size(self) -> int:
        return len(self.kv_indptr_cpu) - 1

    @property
    def num_kv_tokens(self) -> int:
        return self.kv_indptr_cpu[-1]


def cumsum_indptr(lens: list[int]) -> list[int]:
    """``[0, l0, l0 + l1, ...]`` on the host."""
    return [0, *itertools.accumulate(lens)]


def gather_kv_indices(
    req_to_token: torch.Tensor,  # [rows, max_context_len] int32
    req_pool_indices: torch.Tensor,  # [B] int64, row per request
    kv_indptr: torch.Tensor,  # [B + 1] int32
    seq_lens: torch.Tensor,  # [B], device
    total: int,  # sum(seq_lens), known on the host
) -> torch.Tensor:  # [total] int32
    """Copy the first ``seq_lens[i]`` slots of row ``req_pool_indices[i]`` for every request,
    concatenated in batch order. One gather; ``output_size`` keeps it free of host syncs."""
    device = req_to_token.device
    if total == 0:
        return torch.empty(0, dtype=torch.int32, device=device)
    batch = torch.arange(seq_lens.numel(), device=device)
    # owner[t]: the request that token t of the flat list belongs to
    owner = torch.repeat_interleave(batch, seq_lens.to(device), output_size=total)  # [total]
    col = torch.arange(total, device=device) - kv_indptr[:-1].long()[owner]  # position in its row
    row = req_pool_indices.to(device).long()[owner]
    return req_to_token[row, col].to(torch.int32)


def build_paged_kv_index(fb: ForwardBatch) -> PagedKVIndex:
    """The snapshot index of ``fb`` (``qo_indptr`` only for extend batches)."""
    table = fb.req_to_token_pool.req_to_token
    device = table.device
    kv_indptr_cpu = cumsum_indptr(fb.seq_lens_cpu)
    kv_indptr = to_device(kv_indptr_cpu, torch.int32, device)
    seq_lens = fb.seq_lens.to(device)
    kv_indices = gather_kv_indices(
        table, fb.req_pool_indices, kv_indptr, seq_lens, kv_indptr_cpu[-1]
    )
    index = PagedKVIndex(kv_indptr, kv_indices, kv_indptr_cpu)
    if fb.mode.is_extend():
        index.qo_indptr_cpu = cumsum_indptr(fb.extend_seq_lens_cpu)
        index.qo_indptr = to_device(index.qo_indptr_cpu, torch.int32, device)
    return index


def padded_indptr_cpu(kv_indptr_cpu: list[int], padded_bs: int) -> list[int]:
    """Host indptr of the padded decode batch: each padding row adds one KV token."""
    b, total = len(kv_indptr_cpu) - 1, kv_indptr_cpu[-1]
    if padded_bs < b:
        raise ValueError(f"padded_bs={padded_bs} is smaller than the batch ({b})")
    return kv_indptr_cpu + [total + j for j in range(1, padded_bs - b + 1)]


def pad_decode_index_into(
    index: PagedKVIndex,
    padded_bs: int,
    out_indptr: torch.Tensor,  # [>= padded_bs + 1] int32, static
    out_indices: torch.Tensor,  # [>= total + padded_bs - b] int32, static
    arange: torch.Tensor,  # [>= padded_bs + 1] int32, static 0, 1, 2, ...
) -> None:
    """Write the padded index into static buffers with device ops only (graph replay).

    Rows ``b..padded_bs`` get KV length 1 and read slot 0. Entries of the buffers past
    ``out_indptr[padded_bs]`` / ``padded_bs + 1`` are left untouched (never read).
    """
    b, total = index.batch_size, index.num_kv_tokens
    pad = padded_bs - b
    if pad < 0:
        raise ValueError(f"padded_bs={padded_bs} is smaller than the batch ({b})")
    if out_indptr.numel() < padded_bs + 1 or out_indices.numel() < total + pad:
        raise ValueError(
            f"static graph buffers too small: need indptr {padded_bs + 1} / indices {total + pad}, "
            f"have {out_indptr.numel()} / {out_indices.numel()} (raise max_kv_tokens)"
        )
    out_indptr[: b + 1].copy_(index.kv_indptr, non_blocking=True)
    out_indices[:total].copy_(index.kv_indices, non_blocking=True)
    if pad:
        # indptr[b + j] = total + j for j = 1..pad; the padding tokens read slot 0
        torch.add(arange[1 : pad + 1], total, out=out_indptr[b + 1 : padded_bs + 1])
        out_indices[total : total + pad].zero_()


def pad_decode_index(index: PagedKVIndex, padded_bs: int) -> PagedKVIndex:
    """A new padded copy of a decode index (allocating; for backends that copy it themselves)."""
    b, total = index.batch_size, index.num_kv_tokens
    pad = padded_bs - b
    indptr_cpu = padded_indptr_cpu(index.kv_indptr_cpu, padded_bs)
    device = index.kv_indptr.device
    out_indptr = torch.empty(padded_bs + 1, dtype=torch.int32, device=device)
    out_indices = torch.empty(total + pad, dtype=torch.int32, device=device)
    arange = torch.arange(pad + 1, dtype=torch.int32, device=device)
    pad_decode_index_into(index, padded_bs, out_indptr, out_indices, arange)
    return PagedKVIndex(out_indptr, out_indices, indptr_cpu)
