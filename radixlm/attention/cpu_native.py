"""Attention on the native CPU kernels: decode reads K/V straight from the pools by slot index.

Decode: one ``radixlm_cpu.decode_attention`` call per layer over the whole batch, with no
gather into a padded block, GQA in place, and the KV length split across threads for long
contexts. Its metadata is a snapshot of the batch's rows of ``req_to_token`` (``[B, max_len]``
int32, one copy per step), so the scheduler may rewrite the table while the step runs.
Extend (prefill) is the torch path of :class:`TorchNativeBackend`, computed in fp32: torch's
CPU flash attention is several times slower in bf16 than in fp32 on CPUs without AMX (2.3 vs
0.3 ms for 300 tokens x 12 heads here), and fp32 is the more accurate of the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radixlm.attention.base import AttentionLayerSpec
from radixlm.attention.torch_native import TorchNativeBackend
from radixlm.engine.forward_batch import ForwardBatch
from radixlm.errors import ConfigError


@dataclass
class _DecodeMeta:
    table: torch.Tensor  # [B, max_len] int32: slot of every position of request b
    rows: torch.Tensor  # [B] int64 = arange(B) (row b of ``table``)
    lens: torch.Tensor  # [B] int64 KV lengths


class CpuNativeBackend(TorchNativeBackend):
    def __init__(self, kernels=None, head_dim: int | None = None, **_: object) -> None:
        super().__init__()
        if kernels is None:
            raise ConfigError("attention_backend=cpu_native needs the native CPU kernels")
        if head_dim is not None and head_dim > 256:
            raise ConfigError(f"cpu_native attention supports head_dim <= 256, got {head_dim}")
        self.kernels = kernels

    def init_forward_metadata(self, fb: ForwardBatch) -> None:
        if fb.mode.is_extend():
            super().init_forward_metadata(fb)
            return
        max_len = max(fb.seq_lens_cpu)
        table = fb.req_to_token_pool.req_to_token[fb.req_pool_indices, :max_len]  # copy
        rows = torch.arange(fb.batch_size, dtype=torch.int64, device=table.device)
        fb.attn_metadata = _DecodeMeta(table, rows, fb.seq_lens)

    def paged_decode_metadata(self, fb: ForwardBatch) -> tuple | None:
        meta = fb.attn_metadata
        if not isinstance(meta, _DecodeMeta):
            return None
        return meta.table, meta.rows, meta.lens

    def write_kv(self, k, v, layer: AttentionLayerSpec, fb: ForwardBatch) -> None:
        pool = fb.kv_pool
        if k.dtype != pool.dtype:  # the kernel copies rows as they are
            super().write_kv(k, v, layer, fb)
            return
        # One native call writes both pools (the pool's set_kv is two indexed writes).
        self.kernels.set_kv_(
            pool.k_buffers[layer.layer_id], pool.v_buffers[layer.layer_id], fb.out_cache_loc, k, v
        )

    def forward_extend(self, q, k, v, layer: AttentionLayerSpec, fb: ForwardBatch) -> torch.Tensor:
        if q.dtype == torch.float32:
            return super().forward_extend(q, k, v, layer, fb)
        # The parent casts the pooled K/V to q's dtype: fp32 here.
        return super().forward_extend(q.float(), k.float(), v.float(), layer, fb).to(q.dtype)

    def forward_decode(self, q, layer: AttentionLayerSpec, fb: ForwardBatch) -> torch.Tensor:
        meta: _DecodeMeta = fb.attn_metadata
        o = self.kernels.decode_attention(
            q,
            fb.kv_pool.k_buffers[layer.layer_id],
            fb.kv_pool.v_buffers[layer.layer_id],
            meta.table,
            meta.rows,
            meta.lens,
            layer.scaling,
            layer.sliding_window or 0,
        )  # [B, H, D]
        return o.view(q.shape[0], layer.num_heads * layer.head_dim)
