"""Per-request results of a step: logprob bookkeeping and ``ReqOutput`` deltas.

Input logprobs accumulate chunk by chunk (one entry per prompt token from
``logprob_start_len``; the first prompt token's is None) and are sent once, when the prompt
is done. Streams get a delta every ``stream_interval`` decode steps; other requests get one
``ReqOutput`` when they finish.
"""

from __future__ import annotations

from radixlm.scheduler.batch import ScheduleBatch
from radixlm.scheduler.executor import HostOutputs
from radixlm.scheduler.io import DetokInit, ReqOutput
from radixlm.scheduler.req import Req
from radixlm.tokenizer.detokenizer import CONTEXT_TOKENS, MAX_EXTRA_CONTEXT

# Prompt tokens a detokenizer gets as left context (see tokenizer/detokenizer.py).
DETOK_CONTEXT_TOKENS = CONTEXT_TOKENS + MAX_EXTRA_CONTEXT


def record_input_logprobs(batch: ScheduleBatch, res: HostOutputs) -> None:
    """Append the prompt logprobs the executor computed to each request of ``batch``."""
    offset = 0
    for s in batch.plan.input_spans:
        req = batch.reqs[s.req_index]
        n = req.top_logprobs_num
        if s.leading_none:
            req.input_token_logprobs.append(None)
            if n:
                req.input_top_logprobs.append(None)
        for k in range(offset, offset + len(s.rows)):
            req.input_token_logprobs.append(res.input_logprobs[k])
            if n:
                top = zip(res.input_top_logprobs[k][:n], res.input_top_ids[k][:n])
                req.input_top_logprobs.append(list(top))
        offset += len(s.rows)


def record_output_logprob(
    req: Req, logprob: float, top_v: list[float] | None, top_i: list[int] | None
) -> None:
    req.output_token_logprobs.append(logprob)
    n = req.top_logprobs_num
    if n and top_v is not None:
        req.output_top_logprobs.append(list(zip(top_v[:n], top_i[:n])))


def build_output(req: Req, default_interval: int) -> ReqOutput | None:
    """The delta since the last output of ``req``, or None if nothing is due yet."""
    if not req.finished:
        if not req.stream:
            return None
        interval = req.sampling.stream_interval or default_interval
        req.decode_steps_since_sent += 1
        if req.decode_steps_since_sent < interval and req.sent_output_len > 0:
            return None
    req.decode_steps_since_sent = 0
    start = req.sent_output_len
    out = ReqOutput(
        rid=req.rid,
        new_token_ids=req.output_ids[start:],
        finished_reason=req.finished_reason.to_json() if req.finished else None,
        prompt_tokens=req.prompt_len,
        completion_tokens=len(req.output_ids),
        cached_tokens=req.cached_tokens,
        num_retractions=req.num_retractions,
        error_status=req.error_status,
        constraint=req.constraint_report if req.finished else None,
    )
    if start == 0 and not req.sent_any:
        req.sent_any = True
        out.queue_time = req.queue_time
        out.detok_init = DetokInit(req.origin_input_ids[-DETOK_CONTEXT_TOKENS:], req.sampling)
    if req.return_logprob:
        out.output_token_logprobs = req.output_token_logprobs[start:]
        out.output_top_logprobs = req.output_top_logprobs[start:]
        if not req.sent_input_logprobs and (req.input_logprobs_done or req.finished):
            out.input_token_logprobs = list(req.input_token_logprobs)
            out.input_top_logprobs = list(req.input_top_logprobs)
            req.sent_input_logprobs = True
    req.sent_output_len = len(req.output_ids)
    return out
