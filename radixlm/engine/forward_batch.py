"""``ForwardBatch``: the tensors of one model step, built once per step and passed down.

Token-major layout: the new tokens of all requests are concatenated (request order = batch
order). For request ``i``: ``extend_prefix_lens[i]`` tokens already have KV in the pool,
``extend_seq_lens[i]`` new tokens are computed now, and ``seq_lens[i] = prefix + new``.
A DECODE batch is the special case ``extend_seq_lens == 1`` for every request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from radixlm.mem.kv_pool import TokenToKVPool
    from radixlm.mem.req_to_token import ReqToTokenPool


class ForwardMode(IntEnum):
    EXTEND = 1  # prefill of new tokens, possibly after a cached prefix
    DECODE = 2  # exactly one new token per request

    def is_extend(self) -> bool:
        return self == ForwardMode.EXTEND


@dataclass
class ForwardBatch:
    mode: ForwardMode
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64, absolute position of each new token
    out_cache_loc: torch.Tensor  # [T] int64, KV slot each new token is written to
    req_pool_indices: torch.Tensor  # [B] int64, ReqToTokenPool row per request
    seq_lens: torch.Tensor  # [B] int64, KV length after this step
    seq_lens_cpu: list[int]
    extend_prefix_lens_cpu: list[int]
    extend_seq_lens_cpu: list[int]
    req_to_token_pool: ReqToTokenPool
    kv_pool: TokenToKVPool
    # Filled by AttentionBackend.init_forward_metadata before the model runs.
    attn_metadata: Any = field(default=None)

    @property
    def batch_size(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())
