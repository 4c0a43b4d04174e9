"""Decode attention (one query token per request) over a paged KV pool, in two stages.

Stage 1 (``_decode_partial``), grid ``(B, num_kv_heads * cdiv(group, BLOCK_G), num_splits)``: each
program takes the query heads of one KV head (GQA: the group shares every K/V load and runs as
the rows of one ``tl.dot``), and one of ``num_splits`` contiguous chunks of the request's KV.
It writes an fp32 partial output normalised by its own softmax sum, plus the chunk's
log-sum-exp (base 2). Stage 2 (``_decode_reduce``), grid ``(B, num_heads)``, merges the chunks:
``o = sum_s 2^(lse_s - m) o_s / sum_s 2^(lse_s - m)`` with ``m = max_s lse_s``.

Splitting the sequence fills the GPU when the batch is small and contexts are long. The number
of splits depends only on the launch shape (batch size, heads), never on the lengths, so a
CUDA graph captured for one batch size replays for any lengths; the chunk bounds are computed
in the kernel from ``kv_indptr``. A chunk that holds no allowed key (short request, sliding
window) stores ``lse = -inf`` and drops out of the merge.

Sliding window ``W``: the query sits at position ``seq_len - 1`` and may see keys
``k_pos > q_pos - W``, i.e. ``k_pos >= seq_len - W`` (the torch_native semantics).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from radixlm.attention.triton_ops import check_head_dim, dot_in_fp32, interpreting
from radixlm.attention.triton_ops.paged import load_kv_tile, online_softmax_update

#: Upper bound on KV splits; the reduce kernel loads all splits of one head at once.
MAX_SPLITS = 16
#: Aim for this many stage-1 programs per SM when choosing the number of splits.
PROGRAMS_PER_SM = 2
_LOG2E = 1.4426950408889634
#: True when the kernels below were defined in Triton's interpreter (they then take CPU tensors).
INTERPRETED = interpreting()


@triton.jit
def _decode_partial(
    Q,  # [B, H, D]
    K,  # [slots, KVH, D]
    V,
    KV_INDPTR,  # [B + 1] int32
    KV_INDICES,  # [sum seq_lens] int32
    MID_O,  # [B, H, NUM_SPLITS, D] fp32
    MID_LSE,  # [B, H, NUM_SPLITS] fp32, base-2 log-sum-exp
    qk_scale,  # sm_scale * log2(e)
    window,  # sliding window (ignored unless USE_WINDOW)
    num_heads,
    stride_qb,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    GROUP: tl.constexpr,  # query heads per KV head
    BLOCKS_PER_KV: tl.constexpr,  # cdiv(GROUP, BLOCK_G): programs per KV head
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    DOT_FP32: tl.constexpr,  # run both dots on fp32 operands
    PRECISION: tl.constexpr,  # "ieee" with DOT_FP32 (no tf32 rounding)
):
    b = tl.program_id(0)
    head_block = tl.program_id(1)
    split = tl.program_id(2)
    kv_head = head_block // BLOCKS_PER_KV
    offs_g = (head_block % BLOCKS_PER_KV) * BLOCK_G + tl.arange(0, BLOCK_G)
    mask_g = offs_g < GROUP
    heads = kv_head * GROUP + offs_g  # [BLOCK_G]
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM

    kv_start = tl.load(KV_INDPTR + b)
    seq_len = tl.load(KV_INDPTR + b + 1) - kv_start
    # the allowed keys [first, seq_len) are cut into NUM_SPLITS chunks of whole BLOCK_N blocks
    first = 0
    if USE_WINDOW:
        first = tl.maximum(seq_len - window, 0)
    chunk = tl.cdiv(tl.cdiv(seq_len - first, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = first + split * chunk
    hi = tl.minimum(lo + chunk, seq_len)

    q_ptrs = Q + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=mask_g[:, None] & mask_d[None, :], other=0.0)  # [G, D]
    if DOT_FP32:
        q = q.to(tl.float32)

    # NOTE: a finite floor instead of -inf keeps fully masked blocks NaN-free (exp2(-inf) = 0).
    m_i = tl.full([BLOCK_G], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < hi
        slot = tl.load(KV_INDICES + kv_start + offs_n, mask=mask_n, other=0).to(tl.int64)
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = load_kv_tile(K, slot, kv_head, stride_kt, stride_kh, offs_d, kv_mask).to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # [G, N]
        s = tl.where(mask_n[None, :], s, float("-inf"))
        v = load_kv_tile(V, slot, kv_head, stride_vt, stride_vh, offs_d, kv_mask).to(q.dtype)
        m_i, l_i, acc = online_softmax_update(s, v, m_i, l_i, acc, PRECISION)

    nonempty = l_i > 0
    out = acc / tl.where(nonempty, l_i, 1.0)[:, None]
    lse = tl.where(nonempty, m_i + tl.log2(tl.where(nonempty, l_i, 1.0)), float("-inf"))
    row = (b * num_heads + heads).to(tl.int64) * NUM_SPLITS + split  # [G]: (b, head, split)
    tl.store(MID_LSE + row, lse, mask=mask_g)
    tl.store(
        MID_O + row[:, None] * HEAD_DIM + offs_d[None, :],
        out,
        mask=mask_g[:, None] & mask_d[None, :],
    )


@triton.jit
def _decode_reduce(
    MID_O,  # [B, H, NUM_SPLITS, D] fp32
    MID_LSE,  # [B, H, NUM_SPLITS] fp32
    Out,  # [B, H * D]
    stride_ob,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    num_heads = tl.num_programs(1)
    offs_s = tl.arange(0, BLOCK_S)
    mask_s = offs_s < NUM_SPLITS
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    row = (b * num_heads + h).to(tl.int64) * NUM_SPLITS + offs_s  # [S]
    lse = tl.load(MID_LSE + row, mask=mask_s, other=float("-inf"))
    # every request has >= 1 allowed key, so some split is finite and m is finite
    m = tl.max(lse, 0)
    w = tl.exp2(lse - m)  # [S]
    parts = tl.load(
        MID_O + row[:, None] * HEAD_DIM + offs_d[None, :],
        mask=mask_s[:, None] & mask_d[None, :],
        other=0.0,
    )  # [S, D]
    out = tl.sum(parts * w[:, None], 0) / tl.sum(w, 0)
    tl.store(
        Out + b.to(tl.int64) * stride_ob + h * HEAD_DIM + offs_d,
        out.to(Out.dtype.element_ty),
        mask=mask_d,
    )


def default_num_splits(batch_size: int, num_kv_heads: int, group: int, device: torch.device) -> int:
    """Splits per request: enough stage-1 programs to fill the device, from the shape alone."""
    head_blocks = num_kv_heads * triton.cdiv(group, _block_g(group))
    if device.type == "cuda":
        sms = _sm_count(torch.cuda.current_device() if device.index is None else device.index)
    else:
        sms = 1  # the interpreter runs programs one by one
    want = triton.cdiv(PROGRAMS_PER_SM * sms, max(1, batch_size * head_blocks))
    return max(1, min(MAX_SPLITS, want))


def default_block_n(block_d: int, dot_fp32: bool) -> int:
    """KV tokens per inner-loop block: 64, or 32 for rows over 512 bytes (fp32 head_dim 256),
    so the double-buffered K/V tiles fit in shared memory."""
    return 64 if block_d * (4 if dot_fp32 else 2) <= 512 else 32


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _block_g(group: int) -> int:
    # tl.dot needs >= 16 rows; larger groups are split over programs 64 heads at a time
    return min(64, max(16, triton.next_power_of_2(group)))


def decode_attention(
    q: torch.Tensor,  # [B, H, D]
    k_buf: torch.Tensor,  # [slots, KVH, D]
    v_buf: torch.Tensor,
    kv_indptr: torch.Tensor,  # [B + 1] int32
    kv_indices: torch.Tensor,  # [>= kv_indptr[B]] int32
    sm_scale: float,
    sliding_window: int | None = None,
    num_splits: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:  # [B, H * D], q.dtype
    """Attend each request's single query to its KV ``kv_indices[kv_indptr[i]:kv_indptr[i+1]]``.

    Requires every request to have KV length >= 1. The launch grid depends only on ``B``, the
    head counts and ``num_splits`` (default: :func:`default_num_splits`).
    """
    bs, num_heads, head_dim = q.shape
    num_kv_heads = k_buf.shape[1]
    check_head_dim(head_dim)
    group = num_heads // num_kv_heads
    if q.stride(-1) != 1:
        q = q.contiguous()
    if num_splits is None:
        num_splits = default_num_splits(bs, num_kv_heads, group, q.device)
    block_d = triton.next_power_of_2(head_dim)
    dot_fp32 = dot_in_fp32(q.dtype, INTERPRETED)
    block_n = block_n or default_block_n(block_d, dot_fp32)
    block_g = _block_g(group)
    mid_o = torch.empty(bs, num_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
    mid_lse = torch.empty(bs, num_heads, num_splits, dtype=torch.float32, device=q.device)
    out = torch.empty(bs, num_heads * head_dim, dtype=q.dtype, device=q.device)
    if bs == 0:
        return out
    blocks_per_kv = triton.cdiv(group, block_g)
    _decode_partial[(bs, num_kv_heads * blocks_per_kv, num_splits)](
        q,
        k_buf,
        v_buf,
        kv_indptr,
        kv_indices,
        mid_o,
        mid_lse,
        sm_scale * _LOG2E,
        sliding_window or 0,
        num_heads,
        q.stride(0),
        q.stride(1),
        k_buf.stride(0),
        k_buf.stride(1),
        v_buf.stride(0),
        v_buf.stride(1),
        GROUP=group,
        BLOCKS_PER_KV=blocks_per_kv,
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        BLOCK_G=block_g,
        BLOCK_N=block_n,
        NUM_SPLITS=num_splits,
        USE_WINDOW=sliding_window is not None,
        DOT_FP32=dot_fp32,
        PRECISION="ieee" if dot_fp32 else "tf32",
        num_warps=4 if block_d <= 64 else 8,
        num_stages=2,
    )
    _decode_reduce[(bs, num_heads)](
        mid_o,
        mid_lse,
        out,
        out.stride(0),
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        NUM_SPLITS=num_splits,
        BLOCK_S=triton.next_power_of_2(num_splits),
        num_warps=4,
    )
    return out
