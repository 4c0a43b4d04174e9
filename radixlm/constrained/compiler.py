"""Off-thread grammar compilation with a shared, bounded cache.

``GrammarCompiler.submit(spec)`` returns a ``CompileJob`` at once; the scheduler polls
``ready()`` each step and then takes ``result()``. Compiles run on a small thread pool
(outlines-core builds its ``Index`` with the GIL released, so they overlap the scheduler).

Invariants:
- one compile per spec at a time: identical specs share the in-flight compile, and a finished
  one is served from an LRU cache of ``cache_size`` entries (in-flight compiles are never
  evicted);
- failures are cached too, for ``failure_ttl_s`` (the same spec fails with the same error);
- no method blocks the caller except ``CompileJob.wait`` and ``close``; a job whose compile
  outlives ``timeout_s`` fails with a ``GrammarError`` while the compile finishes in the
  background (its result is still cached for later requests).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from radixlm.constrained.base import CompiledGrammar, GrammarBackend, GrammarSpec
from radixlm.errors import GrammarError

logger = logging.getLogger(__name__)


class CompileJob:
    """One request's handle on a (possibly shared) compile."""

    def __init__(self, spec: GrammarSpec, future: Future, timeout_s: float) -> None:
        self.spec = spec
        self._future = future
        self._timeout_s = timeout_s
        self._deadline = time.monotonic() + timeout_s

    def ready(self) -> bool:
        """The compile finished or failed, or the timeout since submit passed."""
        return self._future.done() or time.monotonic() >= self._deadline

    def result(self) -> CompiledGrammar:
        """The compiled grammar of a ready job; ``GrammarError`` if it failed or timed out."""
        if self._future.cancelled():
            raise GrammarError("the grammar compiler shut down before compiling the grammar")
        if self._future.done():
            exc = self._future.exception()
            if exc is not None:  # a fresh error per job: jobs share the failed future
                raise GrammarError(str(exc)) from exc
            return self._future.result()
        if time.monotonic() >= self._deadline:
            raise GrammarError(
                f"compiling the grammar took longer than {self._timeout_s:g} s; simplify the "
                "schema or raise --grammar-compile-timeout"
            )
        raise RuntimeError("CompileJob.result() called before ready()")

    def wait(self) -> CompiledGrammar:
        """Block until ready (at most the job's remaining timeout), then ``result()``."""
        try:
            self._future.exception(timeout=max(0.0, self._deadline - time.monotonic()))
        except (FutureTimeout, CancelledError):
            pass  # result() reports both
        return self.result()


class GrammarCompiler:
    """Compiles specs on ``max_workers`` threads; see the module docstring for the invariants."""

    def __init__(
        self,
        backend: GrammarBackend,
        max_workers: int = 2,
        cache_size: int = 256,
        timeout_s: float = 30.0,
        failure_ttl_s: float = 60.0,
    ) -> None:
        self.backend = backend
        self.cache_size = cache_size
        self.timeout_s = timeout_s
        self.failure_ttl_s = failure_ttl_s
        self.num_compiles = 0  # compiles started (a test can prove "compiled once")
        self.num_hits = 0  # submits served by an in-flight or cached compile
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="grammar-compile")
        self._lock = threading.Lock()
        self._entries: OrderedDict[GrammarSpec, Future] = OrderedDict()
        self._failed_at: dict[GrammarSpec, float] = {}

    def submit(self, spec: GrammarSpec) -> CompileJob:
        """A job for ``spec``: shared with an in-flight compile, cached, or newly started."""
        with self._lock:
            future = self._entries.get(spec)
            failed_at = self._failed_at.get(spec)
            if failed_at is not None and time.monotonic() - failed_at > self.failure_ttl_s:
                future = None  # a stale failure: compile again
            if future is not None:
                self._entries.move_to_end(spec)
                self.num_hits += 1
            else:
                self._failed_at.pop(spec, None)
                self.num_compiles += 1
                future = self._pool.submit(self._compile, spec)
                self._entries[spec] = future
                self._entries.move_to_end(spec)
                self._evict()
        return CompileJob(spec, future, self.timeout_s)

    def _evict(self) -> None:
        """Drop the least recently used finished entries beyond ``cache_size``."""
        excess = len(self._entries) - self.cache_size
        for spec in list(self._entries):
            if excess <= 0:
                break
            if self._entries[spec].done():
                del self._entries[spec]
                self._failed_at.pop(spec, None)
                excess -= 1

    def _compile(self, spec: GrammarSpec) -> CompiledGrammar:
        start = time.perf_counter()
        try:
            compiled = self.backend.compile(spec)
        except GrammarError:
            self._record_failure(spec)
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # a backend bug, or a Rust panic (a BaseException in pyo3)
            logger.exception("compiling a %s grammar failed unexpectedly", spec.kind)
            self._record_failure(spec)
            raise GrammarError(
                f"cannot compile the {spec.kind} constraint ({type(e).__name__}: {e}); "
                "simplify it or report the problem"
            ) from e
        logger.debug("compiled a %s grammar in %.3f s", spec.kind, time.perf_counter() - start)
        return compiled

    def _record_failure(self, spec: GrammarSpec) -> None:
        with self._lock:
            self._failed_at[spec] = time.monotonic()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "compiles": self.num_compiles,
                "hits": self.num_hits,
                "cached": len(self._entries),
            }

    def close(self) -> None:
        """Stop taking work; running compiles are not waited for."""
        self._pool.shutdown(wait=False, cancel_futures=True)
