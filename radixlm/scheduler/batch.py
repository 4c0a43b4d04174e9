"""``ScheduleBatch``: the scheduler's view of one step, and its lowering to a ``ForwardBatch``.

The batch also carries the ``LogitsPlan``: which token rows need logits — the last row of every
request that samples a token, and the prompt positions whose logprobs were asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from radixlm.engine.forward_batch import ForwardBatch, ForwardMode
from radixlm.mem.kv_pool import TokenToKVPool
from radixlm.mem.req_to_token import ReqToTokenPool
from radixlm.scheduler.req import Req


@dataclass
class InputLogprobSpan:
    req_index: int
    rows: list[int]  # token-major rows whose next-token logprob is wanted
    targets: list[int]  # the prompt token following each row
    leading_none: bool  # the span starts at prompt token 0 (its logprob is None)


@dataclass
class LogitsPlan:
    sample_req_indices: list[int] = field(default_factory=list)  # batch index of sampling reqs
    sample_rows: list[int] = field(default_factory=list)  # their last token row
    input_spans: list[InputLogprobSpan] = field(default_factory=list)


@dataclass
class ScheduleBatch:
    mode: ForwardMode
    reqs: list[Req]
    prefix_lens: list[int]  # KV tokens each request already had before this step
    extend_lens: list[int]  # new tokens per request (1 for decode)
    out_cache_loc: torch.Tensor  # [sum(extend_lens)] slots for the new tokens
    plan: LogitsPlan

    @property
    def batch_size(self) -> int:
        return len(self.reqs)

    def to_forward_batch(
        self, req_to_token_pool: ReqToTokenPool, kv_pool: TokenToKVPool, device: torch.device
    ) -> ForwardBatch:
        ids: list[int] = []
        positions: list[int] = []
        if self.mode.is_extend():
            for req, prefix, ext in zip(self.reqs, self.prefix_lens, self.extend_lens):
                ids.extend(req.fill_ids[prefix : prefix + ext])
                positions.extend(range(prefix, prefix + ext))
        else:  # the newest token of each request; its position is the current KV length
            ids = [req.output_ids[-1] for req in self.reqs]
            positions = list(self.prefix_lens)
        seq_lens = [p + e for p, e in zip(self.prefix_lens, self.extend_lens)]
        return ForwardBatch(
            mode=self.mode,
            input_ids=torch.tensor(ids, dtype=torch.int64, device=device),
            positions=torch.tensor(positions, dtype=torch.int64, device=device),
            out_cache_loc=self.out_cache_loc,
            req_pool_indices=torch.tensor(
                [r.req_pool_idx for r in self.reqs], dtype=torch.int64, device=device
            ),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int64, device=device),
            seq_lens_cpu=seq_lens,
            extend_prefix_lens_cpu=list(self.prefix_lens),
            extend_seq_lens_cpu=list(self.extend_lens),
            req_to_token_pool=req_to_token_pool,
            kv_pool=kv_pool,
        )


def plan_extend_logits(
    reqs: list[Req], prefix_lens: list[int], extend_lens: list[int]
) -> LogitsPlan:
    plan = LogitsPlan()
    offset = 0
    for i, (req, prefix, ext) in enumerate(zip(reqs, prefix_lens, extend_lens)):
        if not req.is_chunked and req.remaining_new_tokens() > 0:
            plan.sample_req_indices.append(i)
            plan.sample_rows.append(offset + ext - 1)
        if req.wants_input_logprobs:
            start = min(req.logprob_start_len, req.prompt_len)
            # prompt token t >= 1 is scored at position t - 1
            lo = max(prefix, max(start, 1) - 1)
            hi = min(prefix + ext, req.prompt_len - 1)
            fill = req.fill_ids
            positions = range(lo, hi)
            plan.input_spans.append(
                InputLogprobSpan(
                    req_index=i,
                    rows=[offset + p - prefix for p in positions],
                    targets=[fill[p + 1] for p in positions],
                    leading_none=start == 0 and prefix == 0,
                )
            )
        offset += ext
    return plan


def plan_decode_logits(batch_size: int) -> LogitsPlan:
    rows = list(range(batch_size))
    return LogitsPlan(sample_req_indices=rows, sample_rows=rows)
