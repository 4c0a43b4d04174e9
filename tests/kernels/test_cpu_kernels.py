"""Each native CPU kernel against its torch reference (radixlm.kernels.reference)."""

from __future__ import annotations

import pytest
import torch

from radixlm.kernels import reference as ref
from radixlm.layers.rotary import RotaryEmbedding

DTYPES = (torch.float32, torch.bfloat16)
# Tolerances relative to the output's scale: fp32 differs in summation order only; bf16 by one
# rounding of the (fp32-accumulated) result.
RTOL = {torch.float32: 2e-6, torch.bfloat16: 8e-3}


def _close(out: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    assert out.dtype == expected.dtype and out.shape == expected.shape
    scale = expected.float().abs().max().clamp_min(1.0)
    err = (out.float() - expected.float()).abs().max()
    assert err <= rtol * scale, f"max error {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape", [(1, 50, 33), (3, 1280, 768), (13, 100, 64), (30, 77, 2048), (40, 64, 96)]
)
@pytest.mark.parametrize("bias", [False, True])
def test_linear(kernels, dtype, shape, bias):
    m, n, k = shape
    g = torch.Generator().manual_seed(m * n + k)
    w = torch.randn(n, k, generator=g).to(dtype)
    x = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g) if bias else None
    kind = "fp32" if dtype == torch.float32 else "bf16"
    packed = kernels.pack_linear_weight(w, kind)
    _close(kernels.linear_packed(x, packed, n, kind, None, b), ref.linear(x, w, b), RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 50, 33), (8, 1280, 768), (17, 96, 2048)])
def test_linear_int8(kernels, dtype, shape):
    m, n, k = shape
    g = torch.Generator().manual_seed(n + k)
    w = torch.randn(n, k, generator=g)
    w[3] = 0  # an all-zero row gets scale 1, not a division by zero
    x = torch.randn(m, k, generator=g).to(dtype)
    q, scales = ref.quantize_per_channel(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127 and float(scales[3]) == 1.0
    packed = kernels.pack_linear_weight(q, "int8")
    out = kernels.linear_packed(x, packed, n, "int8", scales, None)
    _close(out, ref.linear(x, q, None, scales), RTOL[dtype])
    # and the quantization error against the unquantized weight stays small
    full = ref.linear(x.float(), w)
    assert (out.float() - full).abs().max() <= 0.02 * full.abs().max()


def _pools(g, slots, kvh, d, dtype):
    return (
        torch.randn(slots, kvh, d, generator=g).to(dtype),
        torch.randn(slots, kvh, d, generator=g).to(dtype),
    )


@pytest.mark.parametrize("q_dtype", DTYPES)
@pytest.mark.parametrize("kv_dtype", DTYPES)
@pytest.mark.parametrize(
    "b,h,kvh,d,max_len,window",
    [
        (1, 12, 4, 64, 1, 0),  # one key
        (1, 12, 4, 64, 300, 0),  # batch 1: split over the KV length
        (5, 8, 2, 128, 1000, 0),
        (3, 16, 16, 80, 40, 0),  # MHA, head_dim 80
        (4, 12, 4, 64, 4096, 0),  # long context
        (6, 8, 4, 64, 500, 100),  # sliding window
        (2, 4, 1, 128, 17, 0),  # MQA
        (3, 8, 8, 8, 70, 0),  # head_dim 8 (stories260K): a masked tail
        (2, 6, 2, 40, 33, 0),  # head_dim 40: 2 whole vectors + a tail
    ],
)
def test_decode_attention(kernels, q_dtype, kv_dtype, b, h, kvh, d, max_len, window):
    g = torch.Generator().manual_seed(b * 1000 + max_len)
    slots = b * max_len + 10
    k_pool, v_pool = _pools(g, slots, kvh, d, kv_dtype)
    table = torch.zeros(b + 3, max_len, dtype=torch.int32)
    rows = torch.randperm(b + 3, generator=g)[:b]
    lens = torch.randint(1, max_len + 1, (b,), generator=g)
    lens[0] = max_len  # mixed lengths, the longest at full length
    for r in rows:
        table[r] = (torch.randperm(slots - 1, generator=g)[:max_len] + 1).int()
    # q as a strided view of a fused projection, as the model passes it
    qkv = torch.randn(b, h * d + 2 * kvh * d, generator=g).to(q_dtype)
    q = qkv[:, : h * d].view(b, h, d)
    out = kernels.decode_attention(q, k_pool, v_pool, table, rows, lens, d**-0.5, window)
    expected = ref.decode_attention(q, k_pool, v_pool, table, rows, lens, d**-0.5, window)
    _close(out, expected, 3e-6 if q_dtype == torch.float32 else 8e-3)


@pytest.mark.parametrize("q_dtype", DTYPES)
@pytest.mark.parametrize("kv_dtype", DTYPES)
@pytest.mark.parametrize(
    "h,kvh,d,prefixes,exts,window",
    [
        (12, 4, 64, [0], [1], 0),  # one token, no prefix
        (12, 4, 64, [0], [300], 0),  # a whole prompt
        (12, 4, 64, [450, 450, 0, 37], [60, 1, 33, 100], 0),  # cached prefixes, mixed
        (8, 2, 128, [1000, 5], [70, 200], 0),
        (16, 16, 80, [20], [41], 0),  # MHA, head_dim 80
        (8, 4, 64, [500, 3], [90, 150], 100),  # sliding window, inside and across the prefix
        (4, 1, 128, [17], [50], 0),  # MQA: a token block per 32 rows
        (8, 8, 8, [30], [9], 0),  # head_dim 8: a masked tail
        (6, 2, 40, [4090], [6], 0),  # head_dim 40, a 4k context
        (12, 4, 64, [5, 0], [0, 20], 0),  # a request with no new tokens
        (130, 2, 16, [9], [5], 0),  # 65 query heads per KV head: two head groups per item
    ],
)
def test_extend_attention(kernels, q_dtype, kv_dtype, h, kvh, d, prefixes, exts, window):
    g = torch.Generator().manual_seed(sum(prefixes) + sum(exts) + d)
    lens = [p + e for p, e in zip(prefixes, exts)]
    slots = sum(lens) + 10
    k_pool, v_pool = _pools(g, slots, kvh, d, kv_dtype)
    table = torch.zeros(len(lens) + 2, max(lens), dtype=torch.int32)
    perm = torch.randperm(slots - 1, generator=g) + 1
    used = 0
    for b, n in enumerate(lens):
        table[b, :n] = perm[used : used + n].int()
        used += n
    starts = torch.tensor([sum(exts[:b]) for b in range(len(exts))])
    t = sum(exts)
    qkv = torch.randn(t, h * d + 2 * kvh * d, generator=g).to(q_dtype)
    q = qkv[:, : h * d].view(t, h, d)  # strided, as the model passes it
    args = (table, starts, torch.tensor(prefixes), torch.tensor(exts), d**-0.5, window)
    out = kernels.extend_attention(q, k_pool, v_pool, *args)
    expected = ref.extend_attention(q, k_pool, v_pool, *args)
    _close(out, expected, 3e-6 if q_dtype == torch.float32 else 8e-3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t", [1, 7, 40])
@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rmsnorm(kernels, dtype, t, with_residual):
    g = torch.Generator().manual_seed(t)
    x = torch.randn(t, 768, generator=g).to(dtype)
    residual = torch.randn(t, 768, generator=g).to(dtype) if with_residual else None
    w = (torch.randn(768, generator=g) * 0.1 + 1).to(dtype)
    expected, expected_res = ref.add_rmsnorm(x, residual, w, 1e-6)
    res_in = residual.clone() if with_residual else None
    out, res = kernels.add_rmsnorm(x, res_in, w, 1e-6)
    _close(out, expected, 1e-6 if dtype == torch.float32 else 8e-3)
    assert torch.equal(res, expected_res)  # the residual sum is exact in both dtypes
    # the residual stream is updated in place (or is x itself without one)
    assert res.data_ptr() == (res_in.data_ptr() if with_residual else x.data_ptr())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t,h,kvh,d", [(1, 12, 4, 64), (9, 8, 2, 128), (33, 4, 4, 80)])
def test_rope_in_place(kernels, dtype, t, h, kvh, d):
    g = torch.Generator().manual_seed(t * d)
    rotary = RotaryEmbedding(d, 10000.0, 4096, None, "cpu")
    qkv = torch.randn(t, (h + 2 * kvh) * d, generator=g).to(dtype)
    q, k, _ = qkv.split([h * d, kvh * d, kvh * d], dim=-1)
    q, k = q.view(t, h, d), k.view(t, kvh, d)
    positions = torch.randint(0, 4096, (t,), generator=g)
    eq, ek = ref.rope(positions, q, k, rotary.cos_cache, rotary.sin_cache)
    kernels.rope_(positions, q, k, rotary.cos_cache, rotary.sin_cache)
    assert torch.equal(q, eq) and torch.equal(k, ek)  # same rounding points: bit-exact
    with pytest.raises(RuntimeError, match="outside the RoPE table"):
        kernels.rope_(torch.tensor([4096] * t), q, k, rotary.cos_cache, rotary.sin_cache)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t", [1, 5, 64])
def test_silu_mul(kernels, dtype, t):
    g = torch.Generator().manual_seed(t)
    gate_up = (torch.randn(t, 2 * 2048, generator=g) * 4).to(dtype)
    _close(
        kernels.silu_mul(gate_up), ref.silu_mul(gate_up), 1e-6 if dtype == torch.float32 else 8e-3
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t", [1, 9, 300])
def test_set_kv(kernels, dtype, t):
    g = torch.Generator().manual_seed(t)
    qkv = torch.randn(t, (12 + 8) * 64, generator=g).to(dtype)
    _, k, v = qkv.split([768, 256, 256], dim=-1)
    k, v = k.view(t, 4, 64), v.view(t, 4, 64)  # strided views, as the model passes them
    slots = torch.randperm(1000, generator=g)[:t] + 1
    pools = [torch.randn(1001, 4, 64, generator=g).to(dtype) for _ in range(2)]
    expected = [p.clone() for p in pools]
    ref.set_kv(*expected, slots, k, v)
    kernels.set_kv_(*pools, slots, k, v)
    assert torch.equal(pools[0], expected[0]) and torch.equal(pools[1], expected[1])
    with pytest.raises(RuntimeError, match="outside the pool"):
        kernels.set_kv_(*pools, torch.full((t,), 1001), k, v)
