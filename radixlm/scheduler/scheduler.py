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
import time
from typing import Any

import torch

from radixlm.config import EngineConfig
from radixlm.engine.forward_batch import ForwardMode
from radixlm.engine.model_runner import ModelRunner
from radixlm.engine.sampler import Sampler
from radixlm.errors import RequestError
from radixlm.mem.cache import MatchResult, check_idle_memory, create_prefix_cache
from radixlm.scheduler.batch import ScheduleBatch, plan_decode_logits, plan_extend_logits
from radixlm.scheduler.executor import BatchExecutor, ForwardThread
from radixlm.scheduler.grammar import GrammarManager
from radixlm.scheduler.io import AbortRequest, ReqOutput, TokenizedRequest
from radixlm.scheduler.policy import (
    CLIP_MAX_NEW_TOKENS,
    RETRACT_DECODE_STEPS,
    NewTokenRatio,
    PrefillAdder,
    order_waiting_queue,
)
from radixlm.scheduler.processing import BatchProcessing
from radixlm.scheduler.req import FinishReason, Req
from radixlm.scheduler.stats import SchedulerStats
from radixlm.scheduler.stop import StopChecker

logger = logging.getLogger(__name__)


class Scheduler(BatchProcessing):
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

    def abort_request(self, msg: AbortRequest) -> None:
        """Mark a live request; it is finished with type "abort" at the next step."""
        req = self.reqs.get(msg.rid)
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
        aborts, self._aborts = self._aborts, []
        for req in aborts:
            if req.finished:
                continue
            reason = FinishReason("abort", message=req.to_abort)
            self.grammars.remove(req)
            if req in self.waiting:
                self.waiting.remove(req)
            if req in self.running:
                self.running.remove(req)
            if req is self.chunked_req:
                self.chunked_req = None
            req.finished_reason = reason
            self._release(req)

    # ---- prefill -------------------------------------------------------------------------
    def _get_prefill_batch(self) -> ScheduleBatch | None:
        if not self.waiting and self.chunked_req is None:
            return None
        num_running = len(self.running)
        reserved = (
            sum(min(r.remaining_new_tokens(), CLIP_MAX_NEW_TOKENS) for r in self.running)
            * self.new_token_ratio.value
        )
        adder = PrefillAdder(
            rem_total=int(self.allocator.available_size() + self.cache.evictable_size() - reserved),
            rem_input=self.config.max_prefill_tokens,
            rem_chunk=self.config.chunk_size,
            rem_requests=self.limits.max_running_requests - num_running,
            new_token_ratio=self.new_token_ratio.value,
            nothing_running=num_running == 0,
        )
        matches: dict[int, MatchResult] = {}
        # At most one request is mid-chunk: it resumes first, and nobody else may start a
        # chunk (or overtake it) until it has been admitted this step.
        admit_waiting = True
        if self.chunked_req is not None:
            adder.try_add(self.chunked_req, self.chunked_req.kv_len)
            admit_waiting = bool(adder.admitted) and adder.rem_chunk != 0
        rows_free = self.req_to_token_pool.available_size()
        if self.waiting and admit_waiting and rows_free and adder.rem_requests > 0:
            matches, deferred = order_waiting_queue(
                self.waiting,
                self.config.schedule_policy,
                self.cache,
                self.rng,
                self.config.schedule_aging_tokens_per_pass,
                self.chunked_req,
            )
            for req in list(self.waiting):
                if rows_free == 0:
                    break
                if req.pending is not None:
                    continue  # retracted while its last token was in flight: not known yet
                if id(req) in deferred and adder.admitted:
                    break  # its prefix is being computed in this batch: hit it next pass
                rows_free -= 1
                match = matches.get(id(req))
                if match is None:
                    ids = req.fill_ids[: req.max_cacheable_prefix()]
                    match = matches[id(req)] = self.cache.match_prefix(ids, req.cache_namespace)
                # Lock before anything is allocated, so no eviction can take this prefix; the
                # locked tokens stop being evictable, so they leave the budget too.
                newly_locked = self.cache.lock(match.handle)
                adder.rem_total -= newly_locked
                num_admitted = len(adder.admitted)
                more = adder.try_add(req, len(match.slots))
                if len(adder.admitted) == num_admitted:
                    self.cache.unlock(match.handle)
                    adder.rem_total += newly_locked
                    break
                if not more:
                    break

        admitted = adder.admitted
        for adm in admitted:
            if adm.req is not self.chunked_req:
                self._attach_prefix(adm.req, matches[id(adm.req)])
        reqs, prefix_lens, extend_lens, slot_chunks = [], [], [], []
        for k, adm in enumerate(admitted):
            req = adm.req
            slots = self._alloc_slots(adm.extend_len)
            if slots is None:  # budget estimate was off: undo this and later admissions
                for rest in admitted[k:]:
                    if rest.req is not self.chunked_req:
                        self._free_memory(rest.req)
                break
            if req is not self.chunked_req:
                self.waiting.remove(req)
                req.waiting_passes = 0
                self.stats.prefix_queried_tokens += req.fill_len
                self.stats.prefix_hit_tokens += req.kv_len
                if not req.admitted_once:
                    req.cached_tokens = req.kv_len
                    req.admitted_once = True
                    req.queue_time = time.monotonic() - req.arrival
            self.req_to_token_pool.write(req.req_pool_idx, req.kv_len, slots)
            req.is_chunked = adm.chunked
            reqs.append(req)
            prefix_lens.append(req.kv_len)
            extend_lens.append(adm.extend_len)
            slot_chunks.append(slots)
        if not reqs:
            if not self.running and self._in_flight is None:
                raise RuntimeError("scheduler made no progress: no prefill fits an idle pool")
            return None  # decode first; finishing requests free memory
        self.stats.prefill_computed_tokens += sum(extend_lens)
        return ScheduleBatch(
            mode=ForwardMode.EXTEND,
            reqs=reqs,
            prefix_lens=prefix_lens,
            extend_lens=extend_lens,
            out_cache_loc=torch.cat(slot_chunks),
            plan=plan_extend_logits(reqs, prefix_lens, extend_lens),
        )

    def _attach_prefix(self, req: Req, match: MatchResult) -> None:
        """Give a newly admitted request a row holding its cached prefix (already locked)."""
        req.req_pool_idx = self.req_to_token_pool.alloc()
        n = len(match.slots)
        if n:
            self.req_to_token_pool.write(req.req_pool_idx, 0, match.slots)
        req.last_node = match.handle
        req.kv_len = n
        req.cache_protected_len = n

    def _alloc_slots(self, n: int) -> torch.Tensor | None:
        slots = self.allocator.alloc(n)
        if slots is None:
            self.cache.evict(n - self.allocator.available_size())
            slots = self.allocator.alloc(n)
        return slots

    # ---- decode --------------------------------------------------------------------------
    def _get_decode_batch(self) -> ScheduleBatch | None:
        # Under overlap, a request whose in-flight token is its last cannot decode again.
        reqs = [r for r in self.running if r.num_outputs_launched < r.max_new_tokens]
        if not reqs:
            return None
        slots = self._alloc_slots(len(reqs))
        if slots is None:
            reqs = self._retract(reqs)
            slots = self._alloc_slots(len(reqs))
            if slots is None:
                raise RuntimeError("KV pool cannot hold one decode step of a single request")
        else:
            self.new_token_ratio.decay()
        self.req_to_token_pool.write_tokens(
            [r.req_pool_idx for r in reqs], [r.kv_len for r in reqs], slots
        )
        n = len(reqs)
        return ScheduleBatch(
            mode=ForwardMode.DECODE,
            reqs=reqs,
            prefix_lens=[r.kv_len for r in reqs],
            extend_lens=[1] * n,
            out_cache_loc=slots,
            plan=plan_decode_logits(n),
        )

    def _retract(self, reqs: list[Req]) -> list[Req]:
        """Move decoding requests back to the waiting queue until the rest can keep going;
        returns the requests that stay."""
        retracted = []
        if self.chunked_req is not None:  # a half-prefilled prompt has produced nothing yet
            victim, self.chunked_req = self.chunked_req, None
            self._requeue(victim)
            retracted.append(victim)
        # Victims: least progress first (fewest outputs), then the longest prompts.
        order = sorted(reqs, key=lambda r: (r.num_outputs_launched, -r.prompt_len))
        keep = list(reqs)
        while len(keep) > 1:
            headroom = self.allocator.available_size() + self.cache.evictable_size()
            if headroom >= len(keep) * RETRACT_DECODE_STEPS:
                break
            victim = order.pop(0)
            keep.remove(victim)
            self.running.remove(victim)
            self._requeue(victim)
            retracted.append(victim)
        self.stats.num_retractions += len(retracted)
        self.new_token_ratio.after_retraction(keep)
        logger.info(
            "KV cache pool is full: retracted %d request(s); new_token_ratio %.3f",
            len(retracted),
            self.new_token_ratio.value,
        )
        return keep

    def _requeue(self, req: Req) -> None:
        self._free_memory(req)
        req.num_retractions += 1
        self.waiting.append(req)

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
            free_kv_tokens=self.allocator.available_size(),
        )

    def check_memory_invariants(self) -> None:
        """When idle: every slot is free or cached, every row is free. Raises on a leak."""
        self.drain()
        if self.reqs:
            raise RuntimeError(f"{len(self.reqs)} request(s) still live")
        check_idle_memory(self.allocator, self.cache, self.req_to_token_pool)
