"""Torch references of the native CPU kernels: the semantics each kernel must reproduce.

Each function computes exactly what the model's torch path computes (same ops, same rounding
points), and the kernel tests compare ``radixlm_cpu`` against these on random shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The model's own torch path is the reference for the fused norm and RoPE kernels.
from radixlm.layers.norm import add_rms_norm as add_rmsnorm  # noqa: F401
from radixlm.layers.rotary import apply_rope as rope  # noqa: F401


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 weights with one fp32 scale per output feature (row): ``w ≈ q * s``.

    ``s = max|w_row| / 127`` (1 for an all-zero row), ``q = round(w / s)`` in [-127, 127].
    """
    w = weight.float()
    scales = w.abs().amax(dim=1) / 127.0
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ W^T (+ bias)`` accumulated in fp32, rounded once to x's dtype. ``weight`` int8 with
    ``scales`` is the w8a16 path: ``(x @ q^T) * s + bias``."""
    w = weight.float()
    y = x.float() @ w.t()
    if scales is not None:
        y = y * scales.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def decode_attention(
    q: torch.Tensor,  # [B, H, D]
    k_pool: torch.Tensor,  # [S, KVH, D]
    v_pool: torch.Tensor,
    table: torch.Tensor,  # [R, C] int32
    rows: torch.Tensor,  # [B]
    lens: torch.Tensor,  # [B]
    scale: float,
    window: int,  # <= 0: none
) -> torch.Tensor:  # [B, H, D] in q's dtype
    """Softmax attention of each request's query over its first ``lens[b]`` pool slots (the last
    ``window`` of them with a sliding window), computed in fp32. (With bf16 q and K/V the kernel
    rounds the softmax weights to bf16 before the product with V, as a bf16 attention GEMM
    does: within one bf16 rounding of this.)"""
    out = torch.empty_like(q)
    kvh = k_pool.shape[1]
    for b in range(q.shape[0]):
        n = int(lens[b])
        start = max(0, n - window) if window > 0 else 0
        slots = table[int(rows[b]), start:n].long()
        k = k_pool[slots].float().transpose(0, 1)  # [KVH, L, D]
        v = v_pool[slots].float().transpose(0, 1)
        qb = q[b].float().view(kvh, -1, q.shape[-1])  # [KVH, G, D]
        p = torch.softmax(qb @ k.transpose(1, 2) * scale, dim=-1)  # [KVH, G, L]
        out[b] = (p @ v).reshape(q.shape[1], q.shape[2]).to(q.dtype)
    return out


def extend_attention(
    q: torch.Tensor,  # [T, H, D]: the new tokens of every request, request after request
    k_pool: torch.Tensor,  # [S, KVH, D] (the new tokens' K/V already written)
    v_pool: torch.Tensor,
    table: torch.Tensor,  # [B, C] int32: row b = slots of request b's positions
    starts: torch.Tensor,  # [B] offset of request b's new tokens in q
    prefix: torch.Tensor,  # [B] cached prefix lengths
    ext: torch.Tensor,  # [B] new tokens per request
    scale: float,
    window: int,  # <= 0: none
) -> torch.Tensor:  # [T, H, D] in q's dtype
    """Causal softmax attention of each new token (position ``prefix + i``) over its request's
    keys at positions ``[max(0, p - window + 1), p]`` (from 0 without a window), in fp32."""
    out = torch.empty_like(q)
    kvh, d = k_pool.shape[1], q.shape[-1]
    for b in range(starts.shape[0]):
        s, pre, n = int(starts[b]), int(prefix[b]), int(ext[b])
        if n == 0:
            continue
        slots = table[b, : pre + n].long()
        k = k_pool[slots].float().transpose(0, 1)  # [KVH, L, D]
        v = v_pool[slots].float().transpose(0, 1)
        qb = q[s : s + n].float().view(n, kvh, -1, d).permute(1, 0, 2, 3)  # [KVH, n, G, D]
        q_pos = torch.arange(pre, pre + n).view(n, 1, 1)
        k_pos = torch.arange(pre + n).view(1, 1, -1)
        visible = k_pos <= q_pos
        if window > 0:
            visible &= k_pos > q_pos - window
        scores = torch.einsum("kngd,kld->kngl", qb, k) * scale
        p = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
        o = torch.einsum("kngl,kld->kngd", p, v)  # [KVH, n, G, D]
        out[s : s + n] = o.permute(1, 0, 2, 3).reshape(n, -1, d).to(q.dtype)
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate_up = [gate | up]`` (the MLP of radixlm.models.llama)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def set_kv(
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    slots: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
) -> None:
    """``TokenToKVPool.set_kv``: row ``slots[t]`` of each pool becomes token t's K/V."""
    k_pool[slots] = k.to(k_pool.dtype)
    v_pool[slots] = v.to(v_pool.dtype)
