"""``FlashInferAttnBackend``: paged attention with flashinfer's batch wrappers (CUDA only).

The pool is a paged KV cache with page size 1 in NHD layout: layer ``l``'s K/V buffers
``[size + 1, kv_heads, head_dim]`` are passed as ``(k, v)`` viewed ``[size + 1, 1, kv_heads,
head_dim]``, a request's pages are its slots (``kv_indices`` from
:mod:`radixlm.attention.metadata`) and every ``last_page_len`` is 1. Extend uses
``BatchPrefillWithPagedKVCacheWrapper`` (causal; the new tokens' K/V are in the pool already),
decode ``BatchDecodeWithPagedKVCacheWrapper``.

Planning. flashinfer fixes heads, head_dim, ``sm_scale`` and the window at ``plan()`` time, so
layers are grouped into *kinds* (:class:`LayerKind`) and each kind has its own wrapper, planned
once per step. ``init_forward_metadata`` only snapshots the indices; the plan happens at the
step's first attention call of each kind, on the forward thread. NOTE: a plan is wrapper state,
and under overlap scheduling ``init_forward_metadata`` of step N+1 runs while step N still uses
its plans, so planning there would corrupt the running step.

CUDA graphs (decode): one wrapper per (kind, padded batch size) with ``use_cuda_graph=True``
over static indptr/indices/last_page_len buffers; ``load_graph_metadata`` pads the batch and
plans every known kind before capture or replay (host work from host-side lengths, no sync).
Kinds are known from the ``layers`` option or from earlier eager steps; capturing a kind never
seen raises.

Options (keyword arguments; unknown ones are ignored): ``layers`` (the model's attention layers,
``AttentionLayerSpec``s, to know every kind before CUDA-graph capture), ``workspace_mb`` (float
workspace shared by all wrappers, default 128).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from radixlm.attention.base import AttentionBackend, AttentionLayerSpec
from radixlm.attention.metadata import PagedKVIndex, build_paged_kv_index, pad_decode_index
from radixlm.engine.forward_batch import ForwardBatch
from radixlm.errors import ConfigError

DEFAULT_WORKSPACE_MB = 128


@dataclass(frozen=True)
class LayerKind:
    """Everything a flashinfer plan depends on besides the batch."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    window_left: int  # flashinfer: keys q_pos - window_left .. q_pos; -1 = no window
    sm_scale: float

    @classmethod
    def of(cls, layer: AttentionLayerSpec) -> LayerKind:
        # torch_native allows k_pos > q_pos - W: W keys including the query's own position
        window = layer.sliding_window
        return cls(
            layer.num_heads,
            layer.num_kv_heads,
            layer.head_dim,
            -1 if window is None else window - 1,
            float(layer.scaling),
        )


@dataclass
class FlashInferMetadata:
    index: PagedKVIndex
    is_extend: bool
    graph_bs: int | None = None  # padded batch size when built by load_graph_metadata
    planned: dict[LayerKind, Any] = field(default_factory=dict)  # kind -> wrapper planned for it


class FlashInferAttnBackend(AttentionBackend):
    supports_cuda_graph = True

    def __init__(
        self,
        layers: Iterable[AttentionLayerSpec] | None = None,
        workspace_mb: int = DEFAULT_WORKSPACE_MB,
        **_: object,
    ) -> None:
        try:
            import flashinfer
        except ImportError as e:
            raise ConfigError(
                "attention_backend='flashinfer' needs flashinfer (pip install radixlm[cuda]); "
                "or use --attention-backend triton / torch_native"
            ) from e
        self._fi = flashinfer
        self._workspace_bytes = workspace_mb * 2**20
        self._workspace: torch.Tensor | None = None
        # static config learned over time: the layer kinds seen (or announced via ``layers``)
        self._kinds: dict[LayerKind, None] = {LayerKind.of(layer): None for layer in layers or ()}
        self._eager: dict[tuple[bool, LayerKind], Any] = {}  # (is_extend, kind) -> wrapper
        self._graph: dict[tuple[int, LayerKind], Any] = {}  # (padded_bs, kind) -> wrapper
        self._graph_bufs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # ---- per step -------------------------------------------------------------------------

    def init_forward_metadata(self, fb: ForwardBatch) -> None:
        fb.attn_metadata = FlashInferMetadata(build_paged_kv_index(fb), fb.mode.is_extend())

    def forward_extend(self, q, k, v, layer: AttentionLayerSpec, fb: ForwardBatch) -> torch.Tensor:
        return self._run(q, layer, fb)

    def forward_decode(self, q, layer: AttentionLayerSpec, fb: ForwardBatch) -> torch.Tensor:
        return self._run(q, layer, fb)

    def _run(self, q: torch.Tensor, layer: AttentionLayerSpec, fb: ForwardBatch) -> torch.Tensor:
        meta: FlashInferMetadata = fb.attn_metadata
        wrapper = self._wrapper_for(meta, LayerKind.of(layer), fb)
        pool = fb.kv_pool
        # [size + 1, KVH, D] -> pages of one token: [size + 1, 1, KVH, D]
        cache = (
            pool.k_buffers[layer.layer_id].unsqueeze(1),
            pool.v_buffers[layer.layer_id].unsqueeze(1),
        )
        # plans are made for q in the pool dtype (the model's dtype in this engine)
        out = wrapper.run(q.to(pool.dtype).contiguous(), cache)  # [T, H, D]
        return out.reshape(q.shape[0], layer.num_heads * layer.head_dim).to(q.dtype)

    def _wrapper_for(self, meta: FlashInferMetadata, kind: LayerKind, fb: ForwardBatch):
        wrapper = meta.planned.get(kind)
        if wrapper is not None:
            return wrapper
        if meta.graph_bs is not None:
            raise RuntimeError(
                f"flashinfer CUDA graph: layer kind {kind} was not planned before capture; "
                "pass layers=... to FlashInferAttnBackend (or run one eager step first)"
            )
        self._kinds[kind] = None
        key = (meta.is_extend, kind)
        if key not in self._eager:
            cls = (
                self._fi.BatchPrefillWithPagedKVCacheWrapper
                if meta.is_extend
                else self._fi.BatchDecodeWithPagedKVCacheWrapper
            )
            extra = {} if meta.is_extend else {"use_tensor_cores": _tensor_cores(kind)}
            self._eager[key] = cls(self._get_workspace(meta.index.kv_indptr.device), "NHD", **extra)
        wrapper = self._eager[key]
        self._plan(wrapper, meta, kind, fb.kv_pool.dtype)
        meta.planned[kind] = wrapper
        return wrapper

    def _plan(self, wrapper, meta: FlashInferMetadata, kind: LayerKind, dtype) -> None:
        """Plan ``wrapper`` for ``meta``'s batch. Host tensors for indptr/last_page_len (flashinfer
        reads them on the host: device ones would sync), device ``kv_indices``."""
        if dtype not in (torch.float16, torch.bfloat16):
            raise ConfigError(
                f"flashinfer attention needs a float16/bfloat16 KV cache, got {dtype}; "
                "use --dtype bfloat16 or --attention-backend triton / torch_native"
            )
        index = meta.index
        indptr = torch.tensor(index.kv_indptr_cpu, dtype=torch.int32)
        last_page_len = torch.ones(index.batch_size, dtype=torch.int32)
        common = dict(
            window_left=kind.window_left,
            sm_scale=kind.sm_scale,
            q_data_type=dtype,
            kv_data_type=dtype,
        )
        if meta.is_extend:
            wrapper.plan(
                torch.tensor(index.qo_indptr_cpu, dtype=torch.int32),
                indptr,
                index.kv_indices,
                last_page_len,
                kind.num_heads,
                kind.num_kv_heads,
                kind.head_dim,
                1,  # page_size
                causal=True,
                **common,
            )
        else:
            wrapper.plan(
                indptr,
                index.kv_indices,
                last_page_len,
                kind.num_heads,
                kind.num_kv_heads,
                kind.head_dim,
                1,  # page_size
                pos_encoding_mode="NONE",
                **common,
            )

    def _get_workspace(self, device: torch.device) -> torch.Tensor:
        if self._workspace is None:
            # one float workspace shared by every wrapper (they run one at a time, in order)
            self._workspace = torch.zeros(self._workspace_bytes, dtype=torch.uint8, device=device)
        return self._workspace

    # ---- CUDA graphs (decode) -------------------------------------------------------------

    def init_cuda_graph_state(self, max_bs: int, max_kv_tokens: int, device: torch.device) -> None:
        self._get_workspace(device)
        self._graph_bufs = (
            torch.zeros(max_bs + 1, dtype=torch.int32, device=device),  # kv_indptr
            torch.zeros(max_kv_tokens, dtype=torch.int32, device=device),  # kv_indices
            torch.ones(max_bs, dtype=torch.int32, device=device),  # kv_last_page_len
        )

    def load_graph_metadata(self, fb: ForwardBatch, padded_bs: int) -> FlashInferMetadata:
        if self._graph_bufs is None:
            raise RuntimeError("load_graph_metadata before init_cuda_graph_state")
        meta: FlashInferMetadata = fb.attn_metadata
        if meta.is_extend:
            raise RuntimeError("CUDA graphs only run decode batches")
        indptr_buf, indices_buf, last_buf = self._graph_bufs
        if padded_bs > last_buf.numel():
            raise ValueError(f"padded_bs={padded_bs} exceeds the graph state's max_bs")
        padded = pad_decode_index(meta.index, padded_bs)
        if padded.num_kv_tokens > indices_buf.numel():
            raise ValueError(
                f"{padded.num_kv_tokens} KV tokens exceed the graph state's max_kv_tokens"
            )
        graph_meta = FlashInferMetadata(padded, is_extend=False, graph_bs=padded_bs)
        for kind in self._kinds:
            key = (padded_bs, kind)
            if key not in self._graph:
                # the wrapper keeps views of the static buffers; plan() copies the batch into them
                self._graph[key] = self._fi.BatchDecodeWithPagedKVCacheWrapper(
                    self._get_workspace(indices_buf.device),
                    "NHD",
                    use_cuda_graph=True,
                    use_tensor_cores=_tensor_cores(kind),
                    paged_kv_indptr_buffer=indptr_buf[: padded_bs + 1],
                    paged_kv_indices_buffer=indices_buf,
                    paged_kv_last_page_len_buffer=last_buf[:padded_bs],
                )
            self._plan(self._graph[key], graph_meta, kind, fb.kv_pool.dtype)
            graph_meta.planned[kind] = self._graph[key]
        return graph_meta


def _tensor_cores(kind: LayerKind) -> bool:
    # NOTE: flashinfer's tensor-core decode path is faster for large GQA groups.
    return kind.num_heads // kind.num_kv_heads >= 4
