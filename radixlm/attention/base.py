"""The attention backend interface.

Contract for every backend:
- ``init_forward_metadata(fb)`` runs once per step, before the model, and stores whatever index
  structures the kernels need in ``fb.attn_metadata`` (nothing is kept on the backend itself).
- ``forward(q, k, v, layer, fb)`` first writes the new tokens' K/V into ``fb.out_cache_loc`` of
  layer ``layer.layer_id``, then attends every new query to all KV of its request
  (cached prefix + new tokens, causal), honouring ``layer.sliding_window``.
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
    def init_forward_metadata(self, fb: ForwardBatch) -> None:
        raise NotImplementedError

    def forward(
        self,
        q: torch.Tensor,  # [T, num_heads, head_dim]
        k: torch.Tensor,  # [T, num_kv_heads, head_dim]
        v: torch.Tensor,  # [T, num_kv_heads, head_dim]
        layer: AttentionLayerSpec,
        fb: ForwardBatch,
    ) -> torch.Tensor:  # [T, num_heads * head_dim]
        fb.kv_pool.set_kv(layer.layer_id, fb.out_cache_loc, k, v)
        if fb.mode.is_extend():
            return self.forward_extend(q, k, v, layer, fb)
        return self.forward_decode(q, layer, fb)

    def forward_extend(self, q, k, v, layer: AttentionLayerSpec, fb: ForwardBatch) -> torch.Tensor:
        raise NotImplementedError

    def forward_decode(self, q, layer: AttentionLayerSpec, fb: ForwardBatch) -> torch.Tensor:
        raise NotImplementedError
