"""TritonAttnBackend vs TorchNativeBackend (the oracle) on random paged batches.

Without CUDA the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1), so the
CPU cases are tiny and use 16-wide blocks to exercise multi-block loops; the ``gpu`` cases repeat
them at realistic sizes and also capture/replay a real CUDA graph.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install -e .[dev])")

from radixlm.attention import create_attention_backend  # noqa: E402
from radixlm.attention.torch_native import TorchNativeBackend  # noqa: E402
from radixlm.attention.triton_backend import TritonAttnBackend  # noqa: E402
from radixlm.errors import ConfigError  # noqa: E402
from tests.attention.helpers import Layer, build_batch, clone_batch  # noqa: E402

SMALL = dict(extend_blocks=(16, 16), decode_block_n=16)  # interpreter: many blocks, tiny shapes
BF16 = dict(kv_dtype=torch.bfloat16, q_dtype=torch.bfloat16)
# bf16/fp16: on GPU the kernels round P to the input dtype before P@V (as flash attention does;
# the interpreter upcasts bf16 dots to fp32) while the oracle runs SDPA in that dtype; outputs
# are O(1), so allow a few ulps of the dtype.
LOW_PRECISION_TOL = {torch.bfloat16: 3e-2, torch.float16: 5e-3}


def run(backend, batch, layer):
    b = clone_batch(batch)
    backend.init_forward_metadata(b.fb)
    return backend.forward(b.q, b.k, b.v, layer, b.fb)


def compare(
    prefix,
    ext,
    layer,
    *,
    device="cpu",
    kv_dtype=torch.float32,
    q_dtype=None,
    decode=None,
    seed=0,
    **backend_kwargs,
):
    q_dtype = q_dtype or kv_dtype
    batch = build_batch(
        prefix,
        ext,
        layer,
        decode=decode,
        kv_dtype=kv_dtype,
        q_dtype=q_dtype,
        device=device,
        seed=seed,
    )
    got = run(TritonAttnBackend(**backend_kwargs), batch, layer)
    want = run(TorchNativeBackend(), batch, layer)
    assert got.shape == want.shape == (sum(ext), layer.num_heads * layer.head_dim)
    assert got.dtype == q_dtype
    tol = 1e-5 if q_dtype == torch.float32 and kv_dtype == torch.float32 else None
    tol = tol or LOW_PRECISION_TOL[kv_dtype if kv_dtype != torch.float32 else q_dtype]
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
    return got


# ---- CPU (interpreter) ------------------------------------------------------------------------


@pytest.mark.parametrize("heads", [(4, 2), (8, 1)])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_extend_with_cached_prefix(heads, head_dim, device):
    layer = Layer(heads[0], heads[1], head_dim)
    compare([5, 0, 17], [3, 20, 1], layer, device=device, **SMALL)


def test_extend_without_prefix(device):
    compare([0, 0], [7, 33], Layer(4, 2, 64), device=device, **SMALL)


def test_extend_default_blocks_and_scaling(device):
    layer = Layer(4, 4, 32, scaling=0.3)  # MHA, a non-default scale
    compare([11, 2], [9, 30], layer, device=device)


def test_extend_non_power_of_two_head_dim(device):
    compare([6], [10], Layer(2, 1, 80), device=device, **SMALL)


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("heads", [(4, 2), (8, 1)])
def test_decode(splits, heads, device):
    compare(
        [3, 38, 12],
        [1, 1, 1],
        Layer(heads[0], heads[1], 64),
        num_kv_splits=splits,
        device=device,
        **SMALL,
    )


def test_decode_head_dim_128_default_splits(device):
    compare([20, 1], [1, 1], Layer(4, 2, 128), device=device)


def test_decode_batch_of_one_first_token(device):
    # a decode step whose request has only its new token (KV length 1)
    compare([0], [1], Layer(4, 2, 64), decode=True, num_kv_splits=2, device=device, **SMALL)


def test_mixed_lengths_in_one_extend_batch(device):
    compare([0, 25, 3, 0], [1, 2, 17, 31], Layer(4, 2, 64), device=device, **SMALL)


@pytest.mark.parametrize("window", [1, 5, 23, 100])
def test_sliding_window_extend(window, device):
    compare([14, 0, 30], [9, 21, 2], Layer(4, 2, 64, sliding_window=window), device=device, **SMALL)


@pytest.mark.parametrize("window", [1, 5, 100])
def test_sliding_window_decode(window, device):
    layer = Layer(4, 2, 64, sliding_window=window)
    compare([3, 38, 12], [1, 1, 1], layer, num_kv_splits=3, device=device, **SMALL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_kv(dtype, device):
    layer = Layer(4, 2, 64)
    compare([9, 0], [6, 12], layer, kv_dtype=dtype, device=device, **SMALL)
    compare([9, 30], [1, 1], layer, kv_dtype=dtype, num_kv_splits=2, device=device, **SMALL)


def test_fp32_queries_over_bf16_pool(device):
    compare(
        [9, 30],
        [1, 1],
        Layer(4, 2, 64),
        kv_dtype=torch.bfloat16,
        q_dtype=torch.float32,
        num_kv_splits=2,
        device=device,
        **SMALL,
    )


def test_reads_only_the_pool_through_the_index(device):
    """Writing huge values into every slot the batch does not own leaves the output unchanged."""
    layer = Layer(4, 2, 64)
    batch = build_batch([10, 7], [1, 1], layer, device=device)
    backend = TritonAttnBackend(**SMALL)
    first = run(backend, batch, layer)
    unused = torch.ones(batch.fb.kv_pool.size + 1, dtype=torch.bool, device=device)
    unused[torch.cat(batch.slots)] = False
    unused[0] = False
    batch.fb.kv_pool.k_buffers[0][unused] = 1e4
    torch.testing.assert_close(run(backend, batch, layer), first, atol=0, rtol=0)


def check_graph_path(layer, prefix, padded_bs, device, **kwargs):
    """load_graph_metadata + forward_decode on a padded batch == the eager run on its first rows
    (bitwise: with a fixed number of splits each row's computation does not depend on B)."""
    b = len(prefix)
    batch = build_batch(prefix, [1] * b, layer, device=device)
    backend = TritonAttnBackend(**kwargs)
    eager = run(backend, batch, layer)

    graph = clone_batch(batch)
    backend.init_cuda_graph_state(max_bs=8, max_kv_tokens=sum(prefix) + 64, device=device)
    backend.init_forward_metadata(graph.fb)
    graph.fb.kv_pool.set_kv(layer.layer_id, graph.fb.out_cache_loc, graph.k, graph.v)
    graph.fb.attn_metadata = backend.load_graph_metadata(graph.fb, padded_bs)
    q = torch.zeros(padded_bs, *graph.q.shape[1:], dtype=graph.q.dtype, device=device)
    q[:b] = graph.q
    out = backend.forward_decode(q, layer, graph.fb)
    assert out.shape[0] == padded_bs and torch.isfinite(out).all()
    torch.testing.assert_close(out[:b], eager, atol=0, rtol=0)


def test_graph_metadata_padding(device):
    check_graph_path(Layer(4, 2, 64), [5, 19, 2], 5, device, num_kv_splits=2, **SMALL)


def test_unsupported_head_dim_is_a_config_error(device):
    with pytest.raises(ConfigError, match="torch_native"):
        TritonAttnBackend(head_dim=8)
    with pytest.raises(ConfigError, match="torch_native"):
        compare([0], [3], Layer(2, 1, 512), device=device)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_kv_splits=0),
        dict(num_kv_splits=17),
        dict(decode_block_n=8),
        dict(extend_blocks=(16, 24)),
    ],
)
def test_bad_options_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        TritonAttnBackend(**kwargs)


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    from radixlm.attention.triton_ops import decode_attention

    monkeypatch.setattr(decode_attention, "INTERPRETED", False)
    with pytest.raises(ConfigError, match="TRITON_INTERPRET"):
        compare([0], [3], Layer(2, 1, 64))


def test_missing_triton_is_a_config_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "triton", None)  # import triton -> ImportError
    with pytest.raises(ConfigError, match="torch_native"):
        TritonAttnBackend()


def test_registry_builds_it_and_ignores_unknown_options():
    assert isinstance(create_attention_backend("triton", whatever=1), TritonAttnBackend)


# ---- GPU --------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("heads, head_dim", [((32, 8), 128), ((8, 1), 64), ((16, 16), 256)])
@pytest.mark.parametrize("window", [None, 300])
def test_gpu_extend(cuda, dtype, heads, head_dim, window):
    layer = Layer(heads[0], heads[1], head_dim, sliding_window=window)
    compare([0, 700, 33, 2000, 0], [513, 129, 1, 64, 1000], layer, device=cuda, kv_dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("heads, head_dim", [((32, 8), 128), ((8, 1), 64), ((16, 16), 256)])
@pytest.mark.parametrize("window", [None, 300])
@pytest.mark.parametrize("splits", [None, 1, 16])
def test_gpu_decode(cuda, dtype, heads, head_dim, window, splits):
    layer = Layer(heads[0], heads[1], head_dim, sliding_window=window)
    prefix = [1, 4000, 37, 900, 128, 2]
    compare(prefix, [1] * 6, layer, device=cuda, kv_dtype=dtype, num_kv_splits=splits)


@pytest.mark.gpu
def test_gpu_graph_metadata_padding(cuda):
    check_graph_path(Layer(32, 8, 128), [5, 1900, 2, 300], 8, cuda, num_kv_splits=4)


@pytest.mark.gpu
def test_gpu_cuda_graph_replay_with_new_lengths(cuda):
    """Capture decode once; replays with other lengths (same padded size) match eager runs."""
    layer, padded_bs, size = Layer(32, 8, 128), 4, 12000
    lens = ([10, 20, 30], [4000, 1, 77], [5, 6000, 9], [1, 1, 1])
    batches = [
        build_batch(p, [1] * 3, layer, device=cuda, seed=i, pool_size=size, **BF16)
        for i, p in enumerate(lens)
    ]
    backend = TritonAttnBackend(num_kv_splits=8)  # eager (3 rows) and graph (4) split alike
    backend.init_cuda_graph_state(max_bs=8, max_kv_tokens=size, device=cuda)
    static = clone_batch(batches[0])  # the captured graph reads this pool and q buffer
    q_static = torch.zeros(padded_bs, 32, 128, dtype=torch.bfloat16, device=cuda)
    graph = out = None
    for i, batch in enumerate(batches):
        eager = run(backend, batch, layer)
        b = clone_batch(batch)
        backend.init_forward_metadata(b.fb)
        b.fb.kv_pool.set_kv(0, b.fb.out_cache_loc, b.k, b.v)
        pools = (static.fb.kv_pool, b.fb.kv_pool)
        for dst, src in zip(
            pools[0].k_buffers + pools[0].v_buffers, pools[1].k_buffers + pools[1].v_buffers
        ):
            dst.copy_(src)
        meta = backend.load_graph_metadata(b.fb, padded_bs)  # rewrites the static buffers
        q_static.zero_()
        q_static[:3] = b.q
        if graph is None:
            static.fb.attn_metadata = meta
            backend.forward_decode(q_static, layer, static.fb)  # warm-up: compile outside capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = backend.forward_decode(q_static, layer, static.fb)
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out[:3], eager, atol=0, rtol=0, msg=f"batch {i}")
