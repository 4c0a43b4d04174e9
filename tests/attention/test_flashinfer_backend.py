"""FlashInferAttnBackend against a fake ``flashinfer`` module (flashinfer cannot run on CPU).

The fake wrappers implement flashinfer's documented semantics with plain torch (paged KV with
``kv_len = (pages - 1) * page_size + last_page_len``, queries aligned to the end of the KV,
causal, ``window_left`` inclusive, GQA by head groups, CUDA-graph mode reading the static
buffers that ``plan`` fills) and record every plan. So the tests check both the plan arguments
and, end to end, that they mean what TorchNativeBackend computes. Real kernels: GPU only.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from radixlm.attention import create_attention_backend
from radixlm.attention.torch_native import TorchNativeBackend
from radixlm.errors import ConfigError
from tests.attention.helpers import Layer, build_batch, clone_batch


class _FakeWrapper:
    instances: list = []

    def __init__(self, float_workspace_buffer, kv_layout="NHD", use_cuda_graph=False, **kwargs):
        assert kv_layout == "NHD"
        assert float_workspace_buffer.dtype == torch.uint8
        self.workspace = float_workspace_buffer
        self.use_cuda_graph = use_cuda_graph
        self.kwargs = kwargs
        self.plans: list[dict] = []
        self.runs = 0
        if use_cuda_graph:
            self.bufs = (
                kwargs["paged_kv_indptr_buffer"],
                kwargs["paged_kv_indices_buffer"],
                kwargs["paged_kv_last_page_len_buffer"],
            )
            assert len(self.bufs[0]) == len(self.bufs[2]) + 1
        type(self).instances.append(self)

    def _plan(
        self, qo_indptr, indptr, indices, last_page_len, heads, kv_heads, head_dim, page_size, **kw
    ):
        for host in (qo_indptr, indptr, last_page_len):  # read on the host by flashinfer
            assert host is None or (host.device.type == "cpu" and host.dtype == torch.int32)
        assert indices.dtype == torch.int32
        plan = dict(
            qo_indptr=qo_indptr,
            indptr=indptr.clone(),
            indices=indices.clone(),
            last_page_len=last_page_len.clone(),
            num_qo_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            page_size=page_size,
            **kw,
        )
        if self.use_cuda_graph:  # like flashinfer: copy into the static buffers, run from them
            indptr_buf, indices_buf, last_buf = self.bufs
            assert len(indptr) == len(indptr_buf)
            indptr_buf.copy_(indptr)
            last_buf.copy_(last_page_len)
            indices_buf[: len(indices)].copy_(indices)
            plan.update(indptr=indptr_buf, indices=indices_buf, last_page_len=last_buf)
        self.plans.append(plan)

    def run(self, q, paged_kv_cache):
        plan = self.plans[-1]
        self.runs += 1
        k_cache, v_cache = paged_kv_cache
        assert k_cache.dim() == 4 and k_cache.shape[1:] == (
            plan["page_size"],
            plan["num_kv_heads"],
            plan["head_dim"],
        )
        assert q.dtype == plan["q_data_type"] and k_cache.dtype == plan["kv_data_type"]
        group = plan["num_qo_heads"] // plan["num_kv_heads"]
        indptr, indices = plan["indptr"].tolist(), plan["indices"]
        bs = len(plan["last_page_len"])
        qo = plan["qo_indptr"].tolist() if plan["qo_indptr"] is not None else list(range(bs + 1))
        out = torch.empty_like(q)
        for i in range(bs):
            pages = indices[indptr[i] : indptr[i + 1]].long()
            kv_len = (len(pages) - 1) * plan["page_size"] + int(plan["last_page_len"][i])
            keys = k_cache[pages].flatten(0, 1)[:kv_len].repeat_interleave(group, 1).float()
            vals = v_cache[pages].flatten(0, 1)[:kv_len].repeat_interleave(group, 1).float()
            qi = q[qo[i] : qo[i + 1]].float()  # [E, H, D]
            q_pos = torch.arange(kv_len - qi.shape[0], kv_len)[:, None]
            k_pos = torch.arange(kv_len)[None, :]
            allowed = k_pos <= q_pos if plan.get("causal", True) else k_pos >= 0
            if plan["window_left"] >= 0:
                allowed &= k_pos >= q_pos - plan["window_left"]
            scores = torch.einsum("ehd,khd->hek", qi, keys) * plan["sm_scale"]
            scores = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
            out[qo[i] : qo[i + 1]] = torch.einsum("hek,khd->ehd", scores, vals).to(q.dtype)
        return out


class FakePrefill(_FakeWrapper):
    instances: list = []

    def plan(
        self,
        qo_indptr,
        paged_kv_indptr,
        paged_kv_indices,
        paged_kv_last_page_len,
        num_qo_heads,
        num_kv_heads,
        head_dim_qk,
        page_size,
        **kw,
    ):
        self._plan(
            qo_indptr,
            paged_kv_indptr,
            paged_kv_indices,
            paged_kv_last_page_len,
            num_qo_heads,
            num_kv_heads,
            head_dim_qk,
            page_size,
            **kw,
        )


class FakeDecode(_FakeWrapper):
    instances: list = []

    def plan(
        self, indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim, page_size, **kw
    ):
        self._plan(
            None,
            indptr,
            indices,
            last_page_len,
            num_qo_heads,
            num_kv_heads,
            head_dim,
            page_size,
            **kw,
        )


@pytest.fixture
def fake_flashinfer(monkeypatch):
    mod = types.ModuleType("flashinfer")
    mod.BatchPrefillWithPagedKVCacheWrapper = FakePrefill
    mod.BatchDecodeWithPagedKVCacheWrapper = FakeDecode
    FakePrefill.instances, FakeDecode.instances = [], []
    monkeypatch.setitem(sys.modules, "flashinfer", mod)
    return mod


def backend(**kwargs):
    return create_attention_backend("flashinfer", workspace_mb=1, **kwargs)


BF16 = dict(kv_dtype=torch.bfloat16, q_dtype=torch.bfloat16)  # flashinfer has no fp32 kernels
# the fake computes in fp32 from bf16 inputs, torch_native in bf16: a few bf16 ulps apart
TOL = dict(atol=2e-2, rtol=2e-2)


def run(be, batch, layers):
    b = clone_batch(batch)
    be.init_forward_metadata(b.fb)
    return [be.forward(b.q, b.k, b.v, layer, b.fb) for layer in layers], b.fb


def reference_index(batch):
    table = batch.fb.req_to_token_pool.req_to_token
    indptr, indices = [0], []
    for row, seq in zip(batch.rows, batch.fb.seq_lens_cpu):
        indices += table[row, :seq].tolist()
        indptr.append(indptr[-1] + seq)
    return indptr, indices


@pytest.mark.parametrize("window", [None, 1, 6])
@pytest.mark.parametrize("decode", [False, True])
def test_plan_arguments_and_output(fake_flashinfer, window, decode):
    layer = Layer(8, 2, 16, sliding_window=window, scaling=0.21)
    prefix, ext = ([4, 19, 1], [1, 1, 1]) if decode else ([0, 13, 5], [9, 4, 1])
    batch = build_batch(prefix, ext, layer, decode=decode, **BF16)
    (got,), _ = run(backend(), batch, [layer])
    (want,), _ = run(TorchNativeBackend(), batch, [layer])
    torch.testing.assert_close(got.float(), want.float(), **TOL)

    (wrapper,) = (FakeDecode if decode else FakePrefill).instances
    (plan,) = wrapper.plans
    indptr, indices = reference_index(batch)
    assert plan["indptr"].tolist() == indptr and plan["indices"].tolist() == indices
    assert plan["last_page_len"].tolist() == [1] * len(prefix)
    assert (plan["num_qo_heads"], plan["num_kv_heads"], plan["head_dim"]) == (8, 2, 16)
    assert plan["page_size"] == 1 and plan["sm_scale"] == 0.21
    assert plan["window_left"] == (-1 if window is None else window - 1)
    assert plan["q_data_type"] == plan["kv_data_type"] == torch.bfloat16
    if decode:
        assert plan["qo_indptr"] is None and "causal" not in plan
        assert wrapper.kwargs["use_tensor_cores"] is True  # group of 4
    else:
        q_indptr = [0, 9, 13, 14]
        assert plan["qo_indptr"].tolist() == q_indptr and plan["causal"] is True


def test_one_plan_per_kind_per_step(fake_flashinfer):
    full, other_full = Layer(4, 2, 16), Layer(4, 2, 16, layer_id=1)
    windowed = Layer(4, 2, 16, sliding_window=3, layer_id=2)
    batch = build_batch([3, 0], [4, 6], Layer(4, 2, 16, layer_id=2), **BF16)
    be = backend()
    run(be, batch, [full, other_full, windowed])
    assert len(FakePrefill.instances) == 2  # one wrapper per kind, reused by same-kind layers
    assert [len(w.plans) for w in FakePrefill.instances] == [1, 1]
    assert [w.runs for w in FakePrefill.instances] == [2, 1]
    run(be, batch, [full, windowed])  # the next step plans again, on the same wrappers
    assert len(FakePrefill.instances) == 2
    assert [len(w.plans) for w in FakePrefill.instances] == [2, 2]


def test_graph_padding_plans_static_buffers(fake_flashinfer):
    layer, padded_bs = Layer(4, 4, 16, sliding_window=7), 5
    batch = build_batch([6, 17, 2], [1, 1, 1], layer, **BF16)
    be = backend(layers=[layer])  # kinds known before capture
    (eager,), _ = run(be, batch, [layer])
    be.init_cuda_graph_state(max_bs=8, max_kv_tokens=64, device=torch.device("cpu"))

    g = clone_batch(batch)
    be.init_forward_metadata(g.fb)
    g.fb.kv_pool.set_kv(0, g.fb.out_cache_loc, g.k, g.v)
    g.fb.attn_metadata = be.load_graph_metadata(g.fb, padded_bs)
    graph_wrappers = [w for w in FakeDecode.instances if w.use_cuda_graph]
    assert len(graph_wrappers) == 1
    (w,) = graph_wrappers
    assert w.kwargs["use_tensor_cores"] is False and len(w.bufs[0]) == padded_bs + 1
    indptr, indices = reference_index(batch)
    plan = w.plans[-1]
    assert plan["indptr"].tolist() == indptr + [indptr[-1] + 1, indptr[-1] + 2]
    assert plan["indices"][: indptr[-1] + 2].tolist() == indices + [0, 0]
    assert plan["last_page_len"].tolist() == [1] * padded_bs
    assert plan["window_left"] == 6

    q = torch.zeros(padded_bs, 4, 16, dtype=torch.bfloat16)
    q[:3] = g.q
    out = be.forward_decode(q, layer, g.fb)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:3], eager, atol=0, rtol=0)

    # a kind that was never announced cannot be planned inside a captured graph
    with pytest.raises(RuntimeError, match="layers="):
        be.forward_decode(q, Layer(4, 4, 16), g.fb)


def test_missing_flashinfer_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "flashinfer", None)  # import flashinfer -> ImportError
    with pytest.raises(ConfigError, match=r"pip install radixlm\[cuda\]"):
        create_attention_backend("flashinfer")


def test_fp32_queries_are_cast_to_the_pool_dtype(fake_flashinfer):
    layer = Layer(4, 2, 16)
    batch = build_batch([5, 0], [3, 4], layer, kv_dtype=torch.bfloat16, q_dtype=torch.float32)
    (got,), _ = run(backend(), batch, [layer])
    (want,), _ = run(TorchNativeBackend(), batch, [layer])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, **TOL)


def test_fp32_pool_is_a_config_error(fake_flashinfer):
    layer = Layer(4, 2, 16)
    batch = build_batch([5], [3], layer)
    with pytest.raises(ConfigError, match="bfloat16"):
        run(backend(), batch, [layer])
