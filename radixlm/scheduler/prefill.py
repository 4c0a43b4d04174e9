"""Building a prefill batch: admit waiting requests under the memory and token budgets.

A mixin of :class:`radixlm.scheduler.scheduler.Scheduler` (it uses the scheduler's queues,
pools, prefix cache and config). The chunked request, if any, resumes first; then waiting
requests in policy order, each with its cached prefix locked before anything is allocated, so
no eviction can take it. Admission stops at the first request that does not fit (no
overtaking), and an allocation that fails despite the budget undoes the rest of the batch.
"""

from __future__ import annotations

import time

import torch

from radixlm.engine.forward_batch import ForwardMode
from radixlm.mem.cache import MatchResult
from radixlm.scheduler.batch import ScheduleBatch, plan_extend_logits
from radixlm.scheduler.policy import CLIP_MAX_NEW_TOKENS, PrefillAdder, order_waiting_queue
from radixlm.scheduler.req import Req


class PrefillScheduling:
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
                if req.kv_len:
                    self.cache.record_hit(matches[id(req)].handle)
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
