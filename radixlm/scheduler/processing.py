"""The scheduler's batch bookkeeping: launching a batch and processing its result.

``BatchProcessing`` is one part of :class:`radixlm.scheduler.scheduler.Scheduler` (a mixin over
the same state: ``running``, ``waiting``, ``chunked_req``, ``cache``, pools, ``stats``): what is
committed when a batch is launched (counts, slots, prompts into the tree), how its sampled tokens
are applied (stop checks, grammar, jump-forward), and the one path by which a request gives up
its memory (``_free_memory``).
"""

from __future__ import annotations

from radixlm.engine.sampling_info import SamplingBatchInfo
from radixlm.scheduler.batch import ScheduleBatch
from radixlm.scheduler.executor import BatchResult
from radixlm.scheduler.grammar import ConstraintBroken
from radixlm.scheduler.output import build_output, record_input_logprobs, record_output_logprob
from radixlm.scheduler.req import FinishReason, Req
from radixlm.scheduler.stop import check_finished


class BatchProcessing:
    def _poll_grammars(self) -> None:
        """Move compiled constrained requests to the waiting queue; fail the others (400)."""
        if not self.grammars.queue:
            return
        ready, failed = self.grammars.poll()
        self.waiting.extend(ready)
        for req, err in failed:
            req.finished_reason = FinishReason("abort", message=str(err))
            req.error_status = err.http_status
            self._release(req)

    # ---- launch + results ----------------------------------------------------------------
    def _launch(self, batch: ScheduleBatch) -> None:
        """Make ``batch`` runnable and commit everything that does not depend on its result.

        KV counts advance now; prompts go into the prefix cache now, so the next batch can
        hit them. The tree may then hold slots this batch has yet to write: safe, because
        batches execute in order and only a later batch can read or reuse those slots.
        """
        fb = batch.to_forward_batch(self.req_to_token_pool, self.kv_pool, self.device)
        batch.forward_batch = fb
        vocab = self.runner.vocab_size
        rows = [r.sampling_row(vocab, self.device) for r in batch.sample_reqs]
        batch.sampling_info = SamplingBatchInfo.build(rows, vocab, self.device)
        self.runner.prepare(fb)
        for row, i in enumerate(batch.plan.sample_req_indices):
            batch.reqs[i].pending = (batch, row)
        if not batch.mode.is_extend():
            for req in batch.reqs:
                req.kv_len += 1
            return
        for req, ext in zip(batch.reqs, batch.extend_lens):
            req.kv_len += ext
            self.cache.cache_unfinished_req(req, req.fill_ids[: req.kv_len])
            if req.is_chunked:
                self.chunked_req = req
                continue
            if req is self.chunked_req:
                self.chunked_req = None
            if req.return_logprob and req.logprob_start_len >= 0:
                req.input_logprobs_done = True
            if req.pending is not None:
                self.running.append(req)  # it decodes next (dropped there if it finishes now)

    def _process(self, batch: ScheduleBatch, res: BatchResult) -> None:
        """Apply a batch's sampled tokens: finish, release or stream each request.

        ``res.host()`` is where the scheduler thread waits for the batch's device→host copies
        (on CUDA; by then the next batch is already queued behind it).
        """
        out = res.host()
        self.stats.forward_seconds += res.forward_seconds
        self.stats.forward_steps += 1
        if batch.plan.input_spans:
            record_input_logprobs(batch, out)
        for row, i in enumerate(batch.plan.sample_req_indices):
            req = batch.reqs[i]
            if req.pending is not None and req.pending[0] is batch:
                req.pending = None
            if req.finished:
                continue  # aborted, or finished by the previous batch: drop the extra token
            token = out.next_ids[row]
            req.append_token(token)
            self.stats.generated_tokens += 1
            if req.return_logprob:
                top_v = out.top_logprobs[row] if out.top_logprobs else None
                top_i = out.top_ids[row] if out.top_ids else None
                record_output_logprob(req, out.logprobs[row], top_v, top_i)
            try:
                complete = req.grammar is not None and self.grammars.accept(req, token)
            except ConstraintBroken as err:  # this request fails; the batch goes on
                req.finished_reason = FinishReason("abort", message=str(err))
                req.error_status = err.http_status
                complete = False
            if not req.finished:
                check_finished(req, self.stop_checker)
            if not req.finished and complete:
                req.finished_reason = FinishReason("stop", matched=None)
            if not req.finished and req.grammar is not None and req.pending is None:
                self._jump_forward(req)
            if req.finished:
                if req.req_pool_idx is None and req in self.waiting:
                    self.waiting.remove(req)  # retracted while this token was in flight
                self._release(req)
            else:
                self._emit(req)
        if batch.mode.is_extend():
            for req in batch.reqs:
                if not req.is_chunked and not req.finished and req.max_new_tokens == 0:
                    req.finished_reason = FinishReason("length", length=0)  # prefill only
                    self._release(req)
        self.running = [r for r in self.running if not r.finished and r.req_pool_idx is not None]

    def _jump_forward(self, req: Req) -> None:
        """Append the grammar's forced continuation; the request re-extends it next (its
        unchanged prefix is a cache hit) from the head of the waiting queue."""
        plan = self.grammars.plan_jump_forward(req)
        if plan is None:
            return
        self._free_memory(req)  # caches fill_ids[:kv_len] before the outputs change
        before = len(req.output_ids)
        self.grammars.apply_jump_forward(req, *plan)
        self.stats.jump_forward_tokens += len(req.output_ids) - before
        if req.grammar.is_terminated():
            req.finished_reason = FinishReason("stop", matched=None)
        elif len(req.output_ids) >= req.max_new_tokens:
            req.finished_reason = FinishReason("length", length=len(req.output_ids))
        else:
            self.waiting.insert(0, req)

    def _release(self, req: Req) -> None:
        """Free a finished request's memory and report it."""
        self.stats.num_finished_requests += 1
        if req.compiled_grammar is not None:
            self.grammars.report(req)
        self._free_memory(req)
        self.reqs.pop(req.rid, None)
        self._emit(req)

    def _free_memory(self, req: Req) -> None:
        """Hand the request's KV (``fill_ids[:kv_len]``) to the cache — it keeps what it shares
        and frees the rest, and releases the request's lock — then free its row. The one way a
        request gives up memory: on finish, abort, retraction, or an undone admission."""
        if req.req_pool_idx is None:
            return
        self.cache.cache_finished_req(req, req.fill_ids[: req.kv_len])
        self.req_to_token_pool.free(req.req_pool_idx)
        req.reset_memory()

    def _emit(self, req: Req) -> None:
        out = build_output(req, self.config.stream_interval)
        if out is not None:
            self._outputs.append(out)
