"""Scheduler counters: monotonic totals since start (a flush does not reset them).

Rates (hit rate, throughput) are derived by the reader from two snapshots; the scheduler only
counts. Token counts include re-admissions after a retraction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class SchedulerStats:
    prefix_queried_tokens: int = 0  # fill tokens of every admitted request (prefix-cache queries)
    prefix_hit_tokens: int = 0  # of those, tokens served from the prefix cache
    prefill_computed_tokens: int = 0  # tokens run through extend (prefill) forwards
    num_retractions: int = 0  # requests moved back to the waiting queue for lack of KV room

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
