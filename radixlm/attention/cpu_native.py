"""Attention on the native CPU kernels: K/V are read straight from the pools by slot index.

Decode: one ``radixlm_cpu.decode_attention`` call per layer over the whole batch, with no
gather into a padded block, GQA in place, and the KV length split across threads for long
contexts. Extend (prefill, chunked prefill, mixed batches): one
``radixlm_cpu.extend_attention`` call per layer, causal over each request's cached prefix and
its new tokens (already written to the pool), tiled flash-style in fp32 with no gather and no
mask tensor. Both take a snapshot of the batch's rows of ``req_to_token`` (``[B, max_len]``
int32, one copy per forward), so the scheduler may rewrite the table while the step runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radixlm.attention.base import AttentionLayerSpec
from radixlm.attention.torch_native import TorchNativeBackend
from radixlm.engine.forward_batch import ForwardBatch
from radixlm.errors import ConfigError


@dataclass
class _ExtendMeta:
    table: torch.Tensor  # [B, max_len] int32: slot of every position of request b
    starts: torch.Tensor  # [B] int64 offset of request b's new tokens in the batch
    prefix: torch.Tensor  # [B] int64 cached prefix lengths
    ext: torch.Tensor  # [B] int64 new tokens


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
            prefix, ext = fb.extend_prefix_lens_cpu, fb.extend_seq_lens_cpu
            max_len = max(p + e for p, e in zip(prefix, ext))
            table = fb.req_to_token_pool.req_to_token[fb.req_pool_indices, :max_len]  # copy
            starts = [0]
            for e in ext[:-1]:
                starts.append(starts[-1] + e)
            as_tensor = lambda x: torch.tensor(x, dtype=torch.int64)  # noqa: E731
            fb.attn_metadata = _ExtendMeta(
                table, as_tensor(starts), as_tensor(prefix), as_tensor(ext)
            )
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
        meta: _ExtendMeta = fb.attn_metadata
        o = self.kernels.extend_attention(
            q.view(q.shape[0], layer.num_heads, layer.head_dim),
            fb.kv_pool.k_buffers[layer.layer_id],
            fb.kv_pool.v_buffers[layer.layer_id],
            meta.table,
            meta.starts,
            meta.prefix,
            meta.ext,
            layer.scaling,
            layer.sliding_window or 0,
        )  # [T, H, D]
        return o.view(q.shape[0], layer.num_heads * layer.head_dim)

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
