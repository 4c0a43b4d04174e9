"""The attention backend interface.

Contract for every backend:
- ``init_forward_metadata(fb)`` runs once per step, before the model, and stores whatever index
  structures the kernels need in ``fb.attn_metadata`` (per-batch state is never kept on the
  backend; only the static CUDA-graph buffers below live there).
- ``forward(q, k, v, layer, fb)`` first writes the new tokens' K/V into ``fb.out_cache_loc`` of
  layer ``layer.layer_id``, then attends every new query to all KV of its request
  (cached prefix + new tokens, causal), honouring ``layer.sliding_window``.

Metadata is a snapshot: ``init_forward_metadata`` copies the slot ids it needs out of
``req_to_token`` (the scheduler may rewrite rows for batch N+1 while batch N still runs).

CUDA graphs (decode only), for backends with ``supports_cuda_graph``:
- ``init_cuda_graph_state(max_bs, max_kv_tokens, device)`` allocates static metadata buffers once,
  shared by every captured batch size (``max_kv_tokens`` bounds the KV tokens of one padded batch).
- ``load_graph_metadata(fb, padded_bs)`` runs on the forward thread right before capture or replay:
  it copies ``fb.attn_metadata`` (the snapshot of a decode batch of ``fb.batch_size`` requests)
  into the static buffers, pads rows ``fb.batch_size..padded_bs`` as requests of KV length 1 that
  read slot 0, and returns metadata viewing only static buffers, used in place of the snapshot by
  the captured forward. Device ops only: no host sync, no allocation that depends on the data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from radixlm.engine.forward_batch import ForwardBatch


class AttentionLayerSpec(Protocol):
    layer_id: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scaling: float
    sliding_window: int | None


class AttentionBackend:
    #: True when ``forward_decode`` can run inside a CUDA graph (see the module docstring).
    supports_cuda_graph: bool = False

    def init_forward_metadata(self, fb: ForwardBatch) -> None:
        raise NotImplementedError

    def init_cuda_graph_state(self, max_bs: int, max_kv_tokens: int, device: torch.device) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not support CUDA graphs")

    def load_graph_metadata(self, fb: ForwardBatch, padded_bs: int) -> object:
        raise NotImplementedError(f"{type(self).__name__} does not support CUDA graphs")

    def forward(
        self,
        q: torch.Tensor,  # [T, num_heads, head_dim]
        k: torch.Tensor,  # [T, num_kv_heads, head_dim]
        v: torch.Tensor,  # [T, num_kv_heads, head_dim]
        layer: AttentionLayerSpec,
        fb: ForwardBatch,
    ) -> torch.Tensor:  # [T, num_heads * head_dim]
        self.write_kv(k, v, layer, fb)
        if fb.mode.is_extend():
            return self.forward_extend(q, k, v, layer, fb)
        return self.forward_decode(q, layer, fb)

    def paged_decode_metadata(self, fb: ForwardBatch) -> tuple | None:
        """``(table, rows, lens)`` of a decode batch for kernels that read K/V from the pools by
        slot (``radixlm_cpu.decode_attention``'s arguments), or None if this backend has none."""
        return None

    def write_kv(self, k, v, layer: AttentionLayerSpec, fb: ForwardBatch) -> None:
        """Store the new tokens' K/V in ``fb.out_cache_loc`` of layer ``layer.layer_id``."""
        fb.kv_pool.set_kv(layer.layer_id, fb.out_cache_loc, k, v)

    def forward_extend(self, q, k, v, layer: AttentionLayerSpec, fb: ForwardBatch) -> torch.Tensor:
        raise NotImplementedError

    def forward_decode(self, q, layer: AttentionLayerSpec, fb: ForwardBatch) -> torch.Tensor:
        raise NotImplementedError
