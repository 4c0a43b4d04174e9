"""Building a decode batch: one new token for every running request, retracting requests to
the waiting queue when the KV pool cannot hold the step.

A mixin of :class:`radixlm.scheduler.scheduler.Scheduler`. Retraction frees the victims' KV
(their prefix stays in the tree) and re-queues them; they re-run later and produce the same
tokens, so no request is dropped for lack of memory.
"""

from __future__ import annotations

import logging

from radixlm.engine.forward_batch import ForwardMode
from radixlm.scheduler.batch import ScheduleBatch, plan_decode_logits
from radixlm.scheduler.policy import RETRACT_DECODE_STEPS
from radixlm.scheduler.req import Req

logger = logging.getLogger(__name__)


class DecodeScheduling:
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
