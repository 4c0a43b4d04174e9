"""``TritonAttnBackend``: paged attention with the Triton kernels of :mod:`.triton_ops`.

Per step, ``init_forward_metadata`` snapshots the paged index (``kv_indptr``/``kv_indices``,
``qo_indptr`` for extend; see :mod:`radixlm.attention.metadata`) into ``fb.attn_metadata``.
Extend runs one causal kernel over prefix + new tokens (the new K/V are in the pool already);
decode runs the two-stage split-KV kernel, whose launch grid depends only on the batch size
and head counts, so it can be captured in a CUDA graph.

Options (keyword arguments; unknown ones are ignored, as for every backend):
- ``head_dim``: validated at construction, so an unsupported model fails at start-up with a
  ``ConfigError`` (an engine can catch it and fall back to ``torch_native``). Without it the
  check happens at the first forward.
- ``num_kv_splits``: fixed number of decode KV splits (default: chosen from the batch shape).
- ``extend_blocks``: ``(BLOCK_M, BLOCK_N)`` of the extend kernel; ``decode_block_n``: KV block
  of the decode kernel (both >= 16; defaults tuned for GPUs, tests use small ones).

Runs on CUDA tensors; CPU tensors only when the kernels were defined in Triton's interpreter
(``TRITON_INTERPRET=1`` set before the first import), which is how the tests run without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radixlm.attention.base import AttentionBackend, AttentionLayerSpec
from radixlm.attention.metadata import (
    PagedKVIndex,
    build_paged_kv_index,
    pad_decode_index_into,
    padded_indptr_cpu,
)
from radixlm.engine.forward_batch import ForwardBatch
from radixlm.errors import ConfigError


@dataclass
class TritonMetadata:
    """What the kernels of one step read (a snapshot, or views of the static graph buffers)."""

    kv_indptr: torch.Tensor  # [B + 1] int32
    kv_indices: torch.Tensor  # [>= kv_indptr[B]] int32
    kv_indptr_cpu: list[int]  # [B + 1], host copy of kv_indptr
    qo_indptr: torch.Tensor | None = None  # [B + 1] int32, extend only
    max_extend_len: int = 0  # extend only: sizes the grid


class TritonAttnBackend(AttentionBackend):
    supports_cuda_graph = True

    def __init__(
        self,
        head_dim: int | None = None,
        num_kv_splits: int | None = None,
        extend_blocks: tuple[int, int] | None = None,
        decode_block_n: int | None = None,
        **_: object,
    ) -> None:
        try:
            import triton  # noqa: F401
        except ImportError as e:
            raise ConfigError(
                "attention_backend='triton' needs the triton package (pip install triton); "
                "or use --attention-backend torch_native"
            ) from e
        from radixlm.attention.triton_ops import check_head_dim
        from radixlm.attention.triton_ops import decode_attention as decode_ops
        from radixlm.attention.triton_ops import extend_attention as extend_ops

        if head_dim is not None:
            check_head_dim(head_dim)
        if num_kv_splits is not None and not 1 <= num_kv_splits <= decode_ops.MAX_SPLITS:
            raise ConfigError(f"num_kv_splits must be in 1..{decode_ops.MAX_SPLITS}")
        for block in (decode_block_n, *(extend_blocks or ())):
            if block is not None and (block < 16 or block & (block - 1)):
                raise ConfigError(f"triton block sizes must be powers of two >= 16, got {block}")
        self._decode = decode_ops
        self._extend = extend_ops
        self.num_kv_splits = num_kv_splits
        self.extend_blocks = extend_blocks
        self.decode_block_n = decode_block_n
        # static CUDA-graph buffers (init_cuda_graph_state)
        self._graph_indptr: torch.Tensor | None = None
        self._graph_indices: torch.Tensor | None = None
        self._graph_arange: torch.Tensor | None = None

    # ---- per step -------------------------------------------------------------------------

    def init_forward_metadata(self, fb: ForwardBatch) -> None:
        index = build_paged_kv_index(fb)
        fb.attn_metadata = TritonMetadata(
            index.kv_indptr,
            index.kv_indices,
            index.kv_indptr_cpu,
            index.qo_indptr,
            max(fb.extend_seq_lens_cpu) if fb.mode.is_extend() else 0,
        )

    def forward_extend(self, q, k, v, layer: AttentionLayerSpec, fb: ForwardBatch) -> torch.Tensor:
        self._check_device(q)
        meta: TritonMetadata = fb.attn_metadata
        return self._extend.extend_attention(
            q,
            fb.kv_pool.k_buffers[layer.layer_id],
            fb.kv_pool.v_buffers[layer.layer_id],
            meta.qo_indptr,
            meta.kv_indptr,
            meta.kv_indices,
            meta.max_extend_len,
            layer.scaling,
            layer.sliding_window,
            self.extend_blocks,
        )

    def forward_decode(self, q, layer: AttentionLayerSpec, fb: ForwardBatch) -> torch.Tensor:
        self._check_device(q)
        meta: TritonMetadata = fb.attn_metadata
        return self._decode.decode_attention(
            q,
            fb.kv_pool.k_buffers[layer.layer_id],
            fb.kv_pool.v_buffers[layer.layer_id],
            meta.kv_indptr,
            meta.kv_indices,
            layer.scaling,
            layer.sliding_window,
            self.num_kv_splits,
            self.decode_block_n,
        )

    def _check_device(self, q: torch.Tensor) -> None:
        if q.device.type != "cuda" and not self._decode.INTERPRETED:
            raise ConfigError(
                f"the triton attention backend needs CUDA tensors, got {q.device.type}; "
                "use --attention-backend torch_native (to test the kernels on CPU, set "
                "TRITON_INTERPRET=1 before radixlm.attention.triton_ops is imported)"
            )

    # ---- CUDA graphs (decode) -------------------------------------------------------------

    def init_cuda_graph_state(self, max_bs: int, max_kv_tokens: int, device: torch.device) -> None:
        self._graph_indptr = torch.zeros(max_bs + 1, dtype=torch.int32, device=device)
        self._graph_indices = torch.zeros(max_kv_tokens, dtype=torch.int32, device=device)
        self._graph_arange = torch.arange(max_bs + 1, dtype=torch.int32, device=device)

    def load_graph_metadata(self, fb: ForwardBatch, padded_bs: int) -> TritonMetadata:
        if self._graph_indptr is None:
            raise RuntimeError("load_graph_metadata before init_cuda_graph_state")
        if fb.mode.is_extend():
            raise RuntimeError("CUDA graphs only run decode batches")
        if padded_bs + 1 > self._graph_indptr.numel():
            raise ValueError(f"padded_bs={padded_bs} exceeds the graph state's max_bs")
        meta: TritonMetadata = fb.attn_metadata
        index = PagedKVIndex(meta.kv_indptr, meta.kv_indices, meta.kv_indptr_cpu)
        pad_decode_index_into(
            index, padded_bs, self._graph_indptr, self._graph_indices, self._graph_arange
        )
        # the kernels read only kv_indices[:kv_indptr[padded_bs]], so the whole buffer is passed
        return TritonMetadata(
            self._graph_indptr[: padded_bs + 1],
            self._graph_indices,
            padded_indptr_cpu(meta.kv_indptr_cpu, padded_bs),
        )
