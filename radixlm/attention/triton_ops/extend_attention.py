"""Extend (prefill) attention: the new tokens of each request attend, causally, to the request's
whole KV (cached prefix + the new tokens themselves), all read from the paged pool.

The new tokens' K/V were written to the pool (``set_kv``) before attention runs, so one code
path reads every key through ``kv_indices`` and the prefix needs no special case.

Grid ``(B, num_heads, cdiv(max_extend_len, BLOCK_M))``: a program takes ``BLOCK_M`` query tokens
of one request and one query head, and streams that request's keys in ``BLOCK_N`` blocks with an
online softmax (fp32 accumulators, base-2 exponentials). The key range is clipped to what the
block can see: keys past the block's last query position are never loaded (causal), nor keys
before its first query's window. Programs past a request's new tokens do no work.

Positions: request ``i`` has ``seq_len`` keys and ``ext`` new tokens; new token ``t`` sits at
``q_pos = seq_len - ext + t`` and may see ``k_pos <= q_pos`` and, with a sliding window ``W``,
``k_pos > q_pos - W`` (the torch_native semantics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixlm.attention.triton_ops import check_head_dim, dot_in_fp32, interpreting
from radixlm.attention.triton_ops.paged import load_kv_tile, online_softmax_update

_LOG2E = 1.4426950408889634
INTERPRETED = interpreting()


@triton.jit
def _extend_kernel(
    Q,  # [T, H, D]
    K,  # [slots, KVH, D]
    V,
    Out,  # [T, H * D]
    QO_INDPTR,  # [B + 1] int32
    KV_INDPTR,  # [B + 1] int32
    KV_INDICES,  # [sum seq_lens] int32
    qk_scale,  # sm_scale * log2(e)
    window,  # sliding window (ignored unless USE_WINDOW)
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    GROUP: tl.constexpr,  # query heads per KV head
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    DOT_FP32: tl.constexpr,  # run both dots on fp32 operands
    PRECISION: tl.constexpr,  # "ieee" with DOT_FP32 (no tf32 rounding)
):
    b = tl.program_id(0)
    head = tl.program_id(1)
    m_block = tl.program_id(2)
    kv_head = head // GROUP

    q_start = tl.load(QO_INDPTR + b)
    ext = tl.load(QO_INDPTR + b + 1) - q_start
    kv_start = tl.load(KV_INDPTR + b)
    seq_len = tl.load(KV_INDPTR + b + 1) - kv_start
    prefix = seq_len - ext

    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < ext
    q_pos = prefix + offs_m  # [M]
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM

    q_rows = (q_start + offs_m).to(tl.int64)
    q = tl.load(
        Q + q_rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
        mask=mask_m[:, None] & mask_d[None, :],
        other=0.0,
    )  # [M, D]
    if DOT_FP32:
        q = q.to(tl.float32)

    # keys this block can see: [lo, hi); an empty range when the block is past the new tokens
    hi = tl.minimum(seq_len, prefix + (m_block + 1) * BLOCK_M)
    hi = tl.where(m_block * BLOCK_M < ext, hi, 0)
    lo = 0
    if USE_WINDOW:
        lo = tl.maximum(prefix + m_block * BLOCK_M - window + 1, 0)

    # NOTE: a finite floor instead of -inf keeps fully masked blocks NaN-free (exp2(-inf) = 0).
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < hi
        slot = tl.load(KV_INDICES + kv_start + offs_n, mask=mask_n, other=0).to(tl.int64)
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = load_kv_tile(K, slot, kv_head, stride_kt, stride_kh, offs_d, kv_mask).to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # [M, N]
        allowed = mask_n[None, :] & (offs_n[None, :] <= q_pos[:, None])
        if USE_WINDOW:
            allowed = allowed & (offs_n[None, :] > q_pos[:, None] - window)
        s = tl.where(allowed, s, float("-inf"))
        v = load_kv_tile(V, slot, kv_head, stride_vt, stride_vh, offs_d, kv_mask).to(q.dtype)
        m_i, l_i, acc = online_softmax_update(s, v, m_i, l_i, acc, PRECISION)

    # every real query row sees at least its own key, so l_i > 0 there
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(
        Out + q_rows[:, None] * stride_ot + head * HEAD_DIM + offs_d[None, :],
        out.to(Out.dtype.element_ty),
        mask=mask_m[:, None] & mask_d[None, :],
    )


def default_blocks(block_d: int, dot_fp32: bool) -> tuple[int, int]:
    """``(BLOCK_M, BLOCK_N)`` by the bytes of one K/V row in the dot dtype, so the Q tile and
    the double-buffered K/V tiles fit in shared memory: 64x64 up to 256 B (bf16 head_dim 128),
    64x32 up to 512 B, 32x32 above (fp32 head_dim 256)."""
    row_bytes = block_d * (4 if dot_fp32 else 2)
    if row_bytes <= 256:
        return 64, 64
    return (64, 32) if row_bytes <= 512 else (32, 32)


def extend_attention(
    q: torch.Tensor,  # [T, H, D], the new tokens of all requests, token-major
    k_buf: torch.Tensor,  # [slots, KVH, D], already holding the new tokens' K/V
    v_buf: torch.Tensor,
    qo_indptr: torch.Tensor,  # [B + 1] int32
    kv_indptr: torch.Tensor,  # [B + 1] int32
    kv_indices: torch.Tensor,  # [sum seq_lens] int32
    max_extend_len: int,  # max new tokens of one request (host-known; sizes the grid)
    sm_scale: float,
    sliding_window: int | None = None,
    blocks: tuple[int, int] | None = None,
) -> torch.Tensor:  # [T, H * D], q.dtype
    """Causal attention of every new token to its request's KV (prefix + new tokens)."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_buf.shape[1]
    check_head_dim(head_dim)
    if q.stride(-1) != 1:
        q = q.contiguous()
    block_d = triton.next_power_of_2(head_dim)
    dot_fp32 = dot_in_fp32(q.dtype, INTERPRETED)
    block_m, block_n = blocks or default_blocks(block_d, dot_fp32)
    out = torch.empty(num_tokens, num_heads * head_dim, dtype=q.dtype, device=q.device)
    batch = qo_indptr.numel() - 1
    if num_tokens == 0 or batch == 0:
        return out
    grid = (batch, num_heads, triton.cdiv(max_extend_len, block_m))
    _extend_kernel[grid](
        q,
        k_buf,
        v_buf,
        out,
        qo_indptr,
        kv_indptr,
        kv_indices,
        sm_scale * _LOG2E,
        sliding_window or 0,
        q.stride(0),
        q.stride(1),
        k_buf.stride(0),
        k_buf.stride(1),
        v_buf.stride(0),
        v_buf.stride(1),
        out.stride(0),
        GROUP=num_heads // num_kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        USE_WINDOW=sliding_window is not None,
        DOT_FP32=dot_fp32,
        PRECISION="ieee" if dot_fp32 else "tf32",
        num_warps=4 if block_d <= 64 else 8,
        num_stages=2,
    )
    return out
