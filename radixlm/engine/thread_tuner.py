"""``ThreadTuner``: the intra-op thread count of CPU decode, adapted to CPU contention.

Why: every native kernel and torch op of a step is an OpenMP parallel region that ends in a
barrier. When another process takes one of the cores, the thread on that core runs only part of
the time and every barrier waits for it: with 2 threads on 2 cores and one core busy elsewhere a
decode step measured ~4x slower, while 1 thread on the free core is only ~1.6x slower than 2 on
an idle machine.

How: decode steps are timed; every ``period`` steps, or sooner once ``interval`` seconds of
decode have passed (slow, contended steps then do not delay the reaction by minutes), the tuner
runs ``window`` steps at the other candidate (``max_threads - 1`` while at ``max_threads``,
``max_threads`` while below it) and switches when their median is at least ``margin`` faster than the median of the last ``window``
steps at the current count (adjacent windows see nearly the same batch). Idle cost: ``window``
slower steps per ``period`` (about 1 %).

Invariant: ``threads`` is always ``max_threads`` or ``max_threads - 1``; the caller applies it
with ``torch.set_num_threads`` on the thread that runs the forward, before every step.
"""

from __future__ import annotations

import logging
import statistics
from collections import deque

logger = logging.getLogger(__name__)


class ThreadTuner:
    def __init__(
        self,
        max_threads: int,
        period: int = 400,
        window: int = 8,
        margin: float = 0.15,
        interval: float = 3.0,
    ) -> None:
        assert max_threads >= 2 and window >= 1 and period > window
        self.max_threads = max_threads
        self.period, self.window, self.margin, self.interval = period, window, margin, interval
        self.current = max_threads
        self._recent: deque[float] = deque(maxlen=window)  # step seconds at ``current``
        self._probe: list[float] | None = None  # step seconds at the candidate, while probing
        self._since_probe = 0
        self._seconds_since_probe = 0.0

    @property
    def candidate(self) -> int:
        return self.max_threads - 1 if self.current == self.max_threads else self.max_threads

    @property
    def threads(self) -> int:
        """Threads for the next decode step."""
        return self.candidate if self._probe is not None else self.current

    def record(self, seconds: float) -> None:
        """The duration of the decode step that just ran with :attr:`threads` threads."""
        if self._probe is not None:
            self._probe.append(seconds)
            if len(self._probe) >= self.window:
                self._decide(statistics.median(self._probe))
            return
        self._recent.append(seconds)
        self._since_probe += 1
        self._seconds_since_probe += seconds
        due = self._since_probe >= self.period or self._seconds_since_probe >= self.interval
        if due and len(self._recent) == self.window:
            self._probe = []

    def _decide(self, probe_median: float) -> None:
        current_median = statistics.median(self._recent)
        if probe_median < (1 - self.margin) * current_median:
            logger.info(
                "decode threads %d -> %d (step %.1f -> %.1f ms): %s",
                self.current,
                self.candidate,
                current_median * 1e3,
                probe_median * 1e3,
                "another process is taking a core"
                if self.candidate < self.current
                else "the cores are free again",
            )
            self.current = self.candidate
            self._recent.clear()
        self._probe = None
        self._since_probe = 0
        self._seconds_since_probe = 0.0
