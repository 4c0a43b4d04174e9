"""Pure-torch attention over the paged KV pool; runs on any device and is the correctness oracle.

Extend: one SDPA call per request (queries = its new tokens, keys = its whole KV row), causal
with the cached prefix offset. Decode: one batched SDPA call per bucket of similar-length
requests, over KV gathered into a padded ``[b, max_len]`` block (padding reads the zeroed
slot 0 and is masked out); bucketing keeps the gathered bytes close to the real KV size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from radixlm.attention.base import AttentionBackend, AttentionLayerSpec
from radixlm.engine.forward_batch import ForwardBatch
from radixlm.engine.transfer import to_device


@dataclass
class _ExtendMeta:
    starts: list[int]  # offset of each request's new tokens in the token-major batch
    slots: list[
        torch.Tensor | None
    ]  # KV row [seq_len] per request (None: no prefix, use fresh k/v)
    masks: dict[tuple[int, int | None], torch.Tensor] = field(default_factory=dict)


@dataclass
class _DecodeBucket:
    """Requests of similar KV length, attended together over one padded block."""

    index: torch.Tensor | None  # [b] positions in the batch (None: the whole batch, in order)
    gather: torch.Tensor  # [b, L] int64 slot ids (0 = padding)
    key_pos: torch.Tensor  # [1, L] int64 key positions
    seq_lens: torch.Tensor  # [b, 1] int64
    masks: dict[int | None, torch.Tensor] = field(default_factory=dict)


def length_buckets(
    seq_lens: list[int], ratio: float = 0.6, slack: int = 64, max_tokens: int = 8192
) -> list[list[int]]:
    """Group batch positions by KV length so padding stays small.

    Sorted by length (longest first), a request opens a new bucket when it is shorter than
    ``ratio`` × the bucket's longest and more than ``slack`` tokens shorter; the padded work is
    then within ~1/ratio of the exact work, with few buckets (one per ~1/ratio length octave).
    A bucket also closes once its padded size (requests × longest) would pass ``max_tokens``,
    which bounds the gathered K/V block (transient memory) independently of the batch size.
    """
    order = sorted(range(len(seq_lens)), key=lambda i: -seq_lens[i])
    buckets: list[list[int]] = []
    for i in order:
        if buckets:
            longest = seq_lens[buckets[-1][0]]
            similar = seq_lens[i] >= longest * ratio or longest - seq_lens[i] <= slack
            if similar and (len(buckets[-1]) + 1) * longest <= max_tokens:
                buckets[-1].append(i)
                continue
        buckets.append([i])
    return buckets


class TorchNativeBackend(AttentionBackend):
    def __init__(self, **_: object) -> None:
        # Decode scratch for gathered K/V, reused by every bucket, layer and step (the forward
        # runs on one thread, and a bucket's output is computed before the next gather). Fresh
        # per-layer gathers of up to 2 x 8 MB were the largest transient allocations of a
        # decode step on CPU and left the malloc heap fragmented (peak RSS).
        self._scratch: dict[tuple, torch.Tensor] = {}

    def _gather(self, buf: torch.Tensor, index: torch.Tensor, which: int) -> torch.Tensor:
        """``buf[index]`` for a 2-D ``index`` ([b, L]) written into reusable scratch memory."""
        n = index.numel()
        key = (which, buf.dtype, buf.device, buf.shape[1:])
        scratch = self._scratch.get(key)
        if scratch is None or scratch.shape[0] < n:
            scratch = self._scratch[key] = torch.empty(
                (n, *buf.shape[1:]), dtype=buf.dtype, device=buf.device
            )
        out = scratch[:n]
        torch.index_select(buf, 0, index.view(-1), out=out)
        return out.view(*index.shape, *buf.shape[1:])

    def init_forward_metadata(self, fb: ForwardBatch) -> None:
        rows = fb.req_to_token_pool
        if fb.mode.is_extend():
            starts, slots, offset = [], [], 0
            for i, (prefix, ext) in enumerate(
                zip(fb.extend_prefix_lens_cpu, fb.extend_seq_lens_cpu)
            ):
                starts.append(offset)
                offset += ext
                row = int(fb.req_pool_indices[i])
                slots.append(rows.read(row, prefix + ext) if prefix > 0 else None)
            fb.attn_metadata = _ExtendMeta(starts, slots)
        else:
            buckets = length_buckets(fb.seq_lens_cpu)
            fb.attn_metadata = [
                self._decode_bucket(fb, None if len(buckets) == 1 else b) for b in buckets
            ]

    @staticmethod
    def _decode_bucket(fb: ForwardBatch, members: list[int] | None) -> _DecodeBucket:
        if members is None:
            index, rows, lens = None, fb.req_pool_indices, fb.seq_lens
            max_len = max(fb.seq_lens_cpu)
        else:
            index = to_device(members, torch.int64, fb.seq_lens.device)
            rows, lens = fb.req_pool_indices[index], fb.seq_lens[index]
            max_len = max(fb.seq_lens_cpu[i] for i in members)
        table = fb.req_to_token_pool.req_to_token[rows, :max_len].long()  # [b, L]
        key_pos = torch.arange(max_len, device=table.device).unsqueeze(0)
        seq_lens = lens.view(-1, 1)
        gather = torch.where(key_pos < seq_lens, table, torch.zeros_like(table))
        return _DecodeBucket(index, gather, key_pos, seq_lens)

    def forward_extend(self, q, k, v, layer: AttentionLayerSpec, fb: ForwardBatch) -> torch.Tensor:
        meta: _ExtendMeta = fb.attn_metadata
        out = torch.empty(
            q.shape[0], layer.num_heads * layer.head_dim, dtype=q.dtype, device=q.device
        )
        k_buf, v_buf = fb.kv_pool.k_buffers[layer.layer_id], fb.kv_pool.v_buffers[layer.layer_id]
        window = layer.sliding_window
        for i, (prefix, ext) in enumerate(zip(fb.extend_prefix_lens_cpu, fb.extend_seq_lens_cpu)):
            s = meta.starts[i]
            qi = q[s : s + ext].transpose(0, 1).unsqueeze(0)  # [1, H, E, D]
            if meta.slots[i] is None:
                ki, vi = k[s : s + ext], v[s : s + ext]  # no prefix: keys are the new tokens
            else:
                ki, vi = k_buf[meta.slots[i]], v_buf[meta.slots[i]]  # [S, KVH, D]
            ki = ki.transpose(0, 1).unsqueeze(0).to(q.dtype)  # [1, KVH, S, D]
            vi = vi.transpose(0, 1).unsqueeze(0).to(q.dtype)
            if prefix == 0 and window is None:
                o = F.scaled_dot_product_attention(
                    qi, ki, vi, is_causal=True, scale=layer.scaling, enable_gqa=True
                )
            else:
                mask = self._extend_mask(meta, i, prefix, ext, window, q.device)
                o = F.scaled_dot_product_attention(
                    qi, ki, vi, attn_mask=mask, scale=layer.scaling, enable_gqa=True
                )
            out[s : s + ext] = o[0].transpose(0, 1).reshape(ext, -1)
        return out

    @staticmethod
    def _extend_mask(meta: _ExtendMeta, i: int, prefix: int, ext: int, window: int | None, device):
        key = (i, window)
        if key not in meta.masks:
            q_pos = torch.arange(prefix, prefix + ext, device=device).unsqueeze(1)  # [E, 1]
            k_pos = torch.arange(prefix + ext, device=device).unsqueeze(0)  # [1, S]
            mask = k_pos <= q_pos
            if window is not None:
                mask &= k_pos > q_pos - window
            meta.masks[key] = mask
        return meta.masks[key]

    def forward_decode(self, q, layer: AttentionLayerSpec, fb: ForwardBatch) -> torch.Tensor:
        buckets: list[_DecodeBucket] = fb.attn_metadata
        bs = q.shape[0]
        group = layer.num_heads // layer.num_kv_heads
        k_buf, v_buf = fb.kv_pool.k_buffers[layer.layer_id], fb.kv_pool.v_buffers[layer.layer_id]
        # Query heads of one KV head are contiguous, so [B, H, D] -> [B, KVH, G, D] needs no copy
        # of K/V per query head: the G queries of a group act as G rows against one key set.
        qg = q.view(bs, layer.num_kv_heads, group, layer.head_dim)
        out = None if len(buckets) == 1 else torch.empty_like(qg)
        for b in buckets:
            keys = self._gather(k_buf, b.gather, 0).transpose(1, 2).to(q.dtype)  # [b, KVH, L, D]
            values = self._gather(v_buf, b.gather, 1).transpose(1, 2).to(q.dtype)
            qb = qg if b.index is None else qg[b.index]
            o = F.scaled_dot_product_attention(
                qb,
                keys,
                values,
                attn_mask=self._decode_mask(b, layer.sliding_window),
                scale=layer.scaling,
            )  # [b, KVH, G, D]
            if out is None:
                return o.reshape(bs, layer.num_heads * layer.head_dim)
            out[b.index] = o
        return out.reshape(bs, layer.num_heads * layer.head_dim)

    @staticmethod
    def _decode_mask(meta: _DecodeBucket, window: int | None) -> torch.Tensor:
        if window not in meta.masks:
            mask = meta.key_pos < meta.seq_lens  # [b, L]
            if window is not None:
                mask &= meta.key_pos >= meta.seq_lens - window
            meta.masks[window] = mask[:, None, None, :]  # [b, 1, 1, L]
        return meta.masks[window]
