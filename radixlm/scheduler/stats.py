"""Scheduler counters: monotonic totals since start (a flush does not reset them).

Rates (hit rate, throughput) are derived by the reader from two snapshots; the scheduler only
counts. Token counts include re-admissions after a retraction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from radixlm.mem.cache import PrefixCache


@dataclass
class SchedulerStats:
    prefix_queried_tokens: int = 0  # fill tokens of every admitted request (prefix-cache queries)
    prefix_hit_tokens: int = 0  # of those, tokens served from the prefix cache
    prefill_computed_tokens: int = 0  # tokens run through extend (prefill) forwards
    num_retractions: int = 0  # requests moved back to the waiting queue for lack of KV room
    generated_tokens: int = 0  # output tokens appended to requests
    num_finished_requests: int = 0  # requests that ended (stop, length or abort)
    # Forward + sampling per batch: wall time on CPU; device time between CUDA events on CUDA.
    forward_seconds: float = 0.0
    forward_steps: int = 0  # batches run
    jump_forward_tokens: int = 0  # output tokens appended by grammar jump-forward
    # CPU time the scheduler thread spent inside forwards (non-overlapped loop only), so the
    # thread's own CPU time minus this is the scheduling overhead.
    inline_forward_cpu_seconds: float = 0.0

    def snapshot(self, cache: PrefixCache, **gauges: int) -> dict[str, Any]:
        """Counters plus the prefix cache's state and the caller's ``gauges`` (current sizes)."""
        return {
            "prefill_computed_tokens": self.prefill_computed_tokens,
            "num_retractions": self.num_retractions,
            "generated_tokens": self.generated_tokens,
            "num_finished_requests": self.num_finished_requests,
            "forward_seconds": self.forward_seconds,
            "forward_steps": self.forward_steps,
            "jump_forward_tokens": self.jump_forward_tokens,
            "prefix_cache": {
                "queried_tokens": self.prefix_queried_tokens,
                "hit_tokens": self.prefix_hit_tokens,
                "tree_tokens": cache.total_size(),
                "evictable_tokens": cache.evictable_size(),
                "protected_tokens": cache.protected_size(),
                "evicted_tokens": cache.stats.evicted_tokens,
                "op_seconds": cache.stats.op_seconds,
            },
            **gauges,
        }
