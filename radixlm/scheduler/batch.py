"""``ScheduleBatch``: the scheduler's view of one step, and its lowering to a ``ForwardBatch``.

The batch also carries the ``LogitsPlan``: which token rows need logits — the last row of every
request that samples a token, and the prompt positions whose logprobs were asked for.

Under overlap scheduling a decode batch is built while the previous batch is still sampling
some of its input tokens: those inputs are placeholders (``FutureTokens``) that the executor
fills from the previous batch's ``sampled_ids`` right before the forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from radixlm.engine.forward_batch import ForwardBatch, ForwardMode
from radixlm.engine.sampling_info import SamplingBatchInfo
from radixlm.engine.transfer import to_device
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
class FutureTokens:
    """Input ids of a batch that the previous (still running) batch is sampling."""

    source: ScheduleBatch  # its ``sampled_ids`` hold the values
    src_rows: torch.Tensor  # [P] int64 rows of ``source.sampled_ids``
    dst_positions: torch.Tensor  # [P] int64 positions in this batch's input ids


@dataclass(eq=False)
class ScheduleBatch:
    mode: ForwardMode
    reqs: list[Req]
    prefix_lens: list[int]  # KV tokens each request already had before this step
    extend_lens: list[int]  # new tokens per request (1 for decode)
    out_cache_loc: torch.Tensor  # [sum(extend_lens)] slots for the new tokens
    plan: LogitsPlan
    # Filled when the batch is launched (scheduler thread) ...
    forward_batch: ForwardBatch | None = None
    sampling_info: SamplingBatchInfo | None = None  # one row per plan.sample_rows
    future: FutureTokens | None = None
    # Hook for delayed sampling (constrained decoding): the sampling of this batch needs the
    # previous batch's tokens on the host (e.g. to fill a grammar mask), so the previous result
    # is processed before this batch is submitted. Overlap then covers only the build.
    needs_sync: bool = False
    # [len(plan.sample_rows), words] int32 bitmask of allowed tokens (constrained rows), filled
    # right before the batch runs, when every matcher has seen the previous batch's tokens.
    vocab_mask: torch.Tensor | None = None
    # ... and by the executor: the sampled ids, on the device, read by the next batch.
    sampled_ids: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return len(self.reqs)

    @property
    def sample_reqs(self) -> list[Req]:
        return [self.reqs[i] for i in self.plan.sample_req_indices]

    @property
    def has_grammar(self) -> bool:
        return any(r.grammar is not None for r in self.reqs)

    @property
    def want_logprobs(self) -> bool:
        return any(r.return_logprob for r in self.sample_reqs)

    @property
    def top_logprobs_num(self) -> int:
        return max((r.top_logprobs_num for r in self.sample_reqs), default=0)

    def to_forward_batch(
        self, req_to_token_pool: ReqToTokenPool, kv_pool: TokenToKVPool, device: torch.device
    ) -> ForwardBatch:
        """Build the step's tensors; sets ``self.future`` for inputs still being sampled."""
        ids: list[int] = []
        positions: list[int] = []
        src_rows: list[int] = []
        dst: list[int] = []
        source = None
        if self.mode.is_extend():
            for req, prefix, ext in zip(self.reqs, self.prefix_lens, self.extend_lens):
                assert req.pending is None, "a request with an unsampled token cannot extend"
                ids.extend(req.fill_ids[prefix : prefix + ext])
                positions.extend(range(prefix, prefix + ext))
        else:  # the newest token of each request; its position is the current KV length
            for i, req in enumerate(self.reqs):
                if req.pending is None:
                    ids.append(req.output_ids[-1])
                    continue
                batch, row = req.pending
                assert source is None or batch is source, "placeholders span one batch"
                source = batch
                ids.append(0)
                src_rows.append(row)
                dst.append(i)
            positions = list(self.prefix_lens)
        if source is not None:
            self.future = FutureTokens(
                source,
                to_device(src_rows, torch.int64, device),
                to_device(dst, torch.int64, device),
            )
        seq_lens = [p + e for p, e in zip(self.prefix_lens, self.extend_lens)]
        return ForwardBatch(
            mode=self.mode,
            input_ids=to_device(ids, torch.int64, device),
            positions=to_device(positions, torch.int64, device),
            out_cache_loc=self.out_cache_loc,
            req_pool_indices=to_device([r.req_pool_idx for r in self.reqs], torch.int64, device),
            seq_lens=to_device(seq_lens, torch.int64, device),
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
