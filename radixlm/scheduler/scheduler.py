"""The scheduler: continuous batching over one ``ModelRunner``, driven by ``step()``.

Each step: apply aborts → pick a batch (a prefill batch has priority; otherwise one decode
token for every running request, retracting requests if the KV pool is short) → launch it
(counts, slots, tree insertion of prompts: everything that does not depend on sampled values)
→ run the model and sample (``BatchExecutor``) → process the result: append tokens, check stop
conditions, release finished requests → return the ``ReqOutput``s produced by this step.

Overlap scheduling (default on CUDA, ``enable_overlap_schedule`` on CPU): batch N+1 is built and
launched while batch N still runs on the forward thread, and N's result is processed after that.
N+1's inputs that N is still sampling are placeholders (``Req.pending``). Consequences, all
handled here: a request that finishes in N may run one extra step in N+1 (that token is
dropped); a request retracted or aborted while in flight gets its in-flight token at processing
time (appended, or dropped if it was aborted). Greedy outputs equal the non-overlapped loop's.

Guarantees: every submitted request ends with exactly one finished ``ReqOutput`` (stop, length
or abort); a request is never dropped for lack of memory (it is retracted and re-run later,
producing the same tokens); when no request is live, every KV slot and request row is free
(``check_memory_invariants``).
"""

from __future__ import annotations

import logging
import random
from typing import Any

import torch

from radixlm.config import EngineConfig
from radixlm.engine.model_runner import ModelRunner
from radixlm.engine.sampler import Sampler
from radixlm.errors import RequestError
from radixlm.mem.cache import check_idle_memory, create_prefix_cache
from radixlm.scheduler.batch import ScheduleBatch
from radixlm.scheduler.decode import DecodeScheduling
from radixlm.scheduler.executor import BatchExecutor, ForwardThread
from radixlm.scheduler.grammar import GrammarManager
from radixlm.scheduler.io import AbortRequest, AbortRequests, ReqOutput, TokenizedRequest
from radixlm.scheduler.policy import (
    NewTokenRatio,
)
from radixlm.scheduler.prefill import PrefillScheduling
from radixlm.scheduler.processing import BatchProcessing
from radixlm.scheduler.req import FinishReason, Req
from radixlm.scheduler.stats import SchedulerStats
from radixlm.scheduler.stop import StopChecker

logger = logging.getLogger(__name__)


class Scheduler(BatchProcessing, PrefillScheduling, DecodeScheduling):
    def __init__(
        self,
        config: EngineConfig,
        runner: ModelRunner,
        tokenizer: Any | None,
        forward_thread: ForwardThread | None = None,
    ) -> None:
        self.config = config
        self.runner = runner
        self.limits = runner.limits
        self.device = runner.device
        self.req_to_token_pool = runner.req_to_token_pool
        self.kv_pool = runner.kv_pool
        self.allocator = runner.kv_pool.allocator
        self.cache = create_prefix_cache(
            config.disable_radix_cache, self.req_to_token_pool, self.allocator
        )
        self.sampler = Sampler(runner.vocab_size, self.device, seed=config.random_seed)
        self.stop_checker = StopChecker(tokenizer)
        self.eos_ids = tuple(runner.model_config.eos_token_ids)
        self.rng = random.Random(config.random_seed)

        self.waiting: list[Req] = []
        self.running: list[Req] = []  # decoding requests
        self.chunked_req: Req | None = None  # request in the middle of a chunked prefill
        self.reqs: dict[str, Req] = {}  # every live request by rid
        self._outputs: list[ReqOutput] = []
        self._aborts: list[Req] = []

        self.new_token_ratio = NewTokenRatio(config.schedule_conservativeness)
        self.stats = SchedulerStats()
        self.executor = BatchExecutor(runner, self.sampler, forward_thread)
        self.grammars = GrammarManager(config, tokenizer, runner.vocab_size, self.eos_ids)
        self.overlap = config.overlap_schedule
        self._in_flight: tuple[ScheduleBatch, Any] | None = None  # (batch, Future[BatchResult])

    # ---- intake --------------------------------------------------------------------------
    def add_requests(self, trs: list[TokenizedRequest]) -> None:
        """Validate every request, then queue them all (all or nothing: RequestError)."""
        rids = [tr.rid for tr in trs]
        taken = [r for r in rids if r in self.reqs]
        if taken or len(set(rids)) != len(rids):
            raise RequestError(f"request id {(taken or rids)[0]!r} is already in use")
        reqs = [Req.from_tokenized(tr, self.limits.max_req_len, self.eos_ids) for tr in trs]
        for req in reqs:
            self.grammars.check(req)
        for req in reqs:
            self.reqs[req.rid] = req
            if req.grammar_spec is not None:
                self.grammars.submit(req)  # waits in the grammar queue while it compiles
            else:
                self.waiting.append(req)

    def abort_request(self, msg: AbortRequest | AbortRequests) -> None:
        """Mark live requests; they finish with type "abort" together at the next step."""
        rids = msg.rids if isinstance(msg, AbortRequests) else [msg.rid]
        for rid in rids:
            req = self.reqs.get(rid)
            if req is not None and not req.finished and req.to_abort is None:
                req.to_abort = msg.message
                self._aborts.append(req)

    def has_work(self) -> bool:
        return self.has_runnable_work() or bool(self.grammars.queue)

    def has_runnable_work(self) -> bool:
        """Work a step can advance now (False while only grammars are compiling)."""
        return bool(
            self.waiting
            or self.running
            or self.chunked_req
            or self._outputs
            or self._in_flight is not None
        )

    @property
    def num_live(self) -> int:
        return len(self.reqs)

    # ---- the loop ------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[ReqOutput]:
        """One loop iteration; returns the outputs it produced.

        Overlap: build and launch batch N+1 on the forward thread, then process batch N while
        N+1 runs. Otherwise: build, run and process one batch.
        """
        self._apply_aborts()
        self._poll_grammars()
        if self._in_flight is not None and self._in_flight[0].has_grammar:
            self.drain()  # matchers must see its tokens before the next batch is built
        batch = self._schedule()
        if batch is not None:
            self.grammars.fill_mask(batch, self.device)
        if not self.overlap:
            if batch is not None:
                res = self.executor.run(batch)
                self.stats.inline_forward_cpu_seconds += res.forward_cpu_seconds
                self._process(batch, res)
        else:
            if batch is not None and batch.needs_sync:
                self.drain()  # e.g. its sampling needs the previous batch's tokens
            future = self.executor.submit(batch) if batch is not None else None
            self.drain()
            if batch is not None:
                self._in_flight = (batch, future)
        if batch is None and self._in_flight is None:
            self.new_token_ratio.reset()
        outputs, self._outputs = self._outputs, []
        return outputs

    def drain(self) -> None:
        """Process the batch still running on the forward thread, if any."""
        if self._in_flight is not None:
            batch, future = self._in_flight
            self._in_flight = None
            self._process(batch, future.result())

    def close(self) -> None:
        """Finish in-flight work and stop the forward thread."""
        self.drain()
        self.executor.close()
        self.grammars.close()

    def _schedule(self) -> ScheduleBatch | None:
        batch = self._get_prefill_batch()
        if batch is None and self.running:
            batch = self._get_decode_batch()
        if batch is not None:
            self._launch(batch)
        return batch

    def _apply_aborts(self) -> None:
        aborts = [req for req in self._aborts if not req.finished]
        self._aborts = []
        if not aborts:
            return
        gone = {id(req) for req in aborts}  # one pass over each queue, however many aborts
        self.waiting[:] = [req for req in self.waiting if id(req) not in gone]
        self.running[:] = [req for req in self.running if id(req) not in gone]
        if self.chunked_req is not None and id(self.chunked_req) in gone:
            self.chunked_req = None
        for req in aborts:
            self.grammars.remove(req)
            req.finished_reason = FinishReason("abort", message=req.to_abort)
            self._release(req)

    # ---- maintenance ---------------------------------------------------------------------
    def flush_cache(self) -> bool:
        """Drop all cached KV. Refused (False) while any request is live."""
        self.drain()
        if self.reqs:
            return False
        self.cache.reset()
        self.allocator.clear()
        self.req_to_token_pool.clear()
        return True

    def get_stats(self) -> dict[str, Any]:
        """Counters for observability: scheduler totals plus the prefix cache's state."""
        return self.stats.snapshot(
            self.cache,
            num_running_reqs=len(self.running) + (self.chunked_req is not None),
            num_waiting_reqs=len(self.waiting),
            num_grammar_waiting_reqs=len(self.grammars.queue),
            free_kv_tokens=self.allocator.available_size(),
        )

    def tree_summary(self, k: int, head: int = 48, tail: int = 32) -> dict[str, Any]:
        """The radix tree for the dashboard: node count and the ``k`` most-hit cached prefixes,
        each as its length, hits and its first ``head`` / last ``tail`` token ids."""
        nodes, top = self.cache.top_prefixes(k)
        prefixes = [
            {
                "tokens": len(ids),
                "hits": hits,
                "head": ids[:head],
                "tail": ids[-tail:] if len(ids) > head + tail else ids[head:],
            }
            for ids, hits in top
        ]
        return {"nodes": nodes, "top_prefixes": prefixes}

    def check_memory_invariants(self) -> None:
        """When idle: every slot is free or cached, every row is free. Raises on a leak."""
        self.drain()
        if self.reqs:
            raise RuntimeError(f"{len(self.reqs)} request(s) still live")
        check_idle_memory(self.allocator, self.cache, self.req_to_token_pool)
