"""Pieces shared by the attention kernels (inlined by Triton into each kernel that calls them).

NOTE: like the kernels, these are defined at import, so ``TRITON_INTERPRET`` must be set first.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_kv_tile(base, slot, kv_head, stride_t, stride_h, offs_d, mask):
    """Rows ``slot`` (``[N]`` int64 KV slots) of one KV head of a ``[slots, KVH, D]`` buffer:
    ``[N, BLOCK_D]``, zeros where ``mask`` is false."""
    ptrs = base + slot[:, None] * stride_t + kv_head * stride_h + offs_d[None, :]
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def online_softmax_update(s, v, m_i, l_i, acc, PRECISION: tl.constexpr):
    """Fold one block of base-2 scores ``s [M, N]`` (masked entries -inf) and its values
    ``v [N, D]`` into the running max ``m_i``, sum ``l_i`` and unnormalised output ``acc``.

    Invariant: ``acc / l_i`` is the softmax-weighted mean of every value folded so far; ``m_i``
    starts at a finite floor, so a fully masked block leaves the state unchanged (no NaN).
    """
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc
