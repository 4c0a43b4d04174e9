"""Grammar compilation off the scheduler: killable worker processes and a shared, bounded cache.

``GrammarCompiler.submit(spec)`` returns a ``CompileJob`` at once; the scheduler polls
``ready()`` each step and then takes ``result()``. The slow half of a compile
(``GrammarBackend.build``) runs in a ``CompileWorkerPool`` of worker processes, each with its own
copy of the backend (built from a ``BackendRecipe``); the fast half (``load``) runs here, on the
first ``result()``.

Invariants:
- identical specs compile once: they share the in-flight build, and a loaded grammar is served
  from an LRU cache of ``cache_size`` entries; failures are cached for ``failure_ttl_s``;
- a build's time limit counts from when a worker starts it, never time spent queued; a build
  over its limit or its memory limit is killed, and the request fails with a ``GrammarError``;
- one slow build holds one worker: other specs go on compiling on the others;
- ``CompileJob.cancel`` (an aborted request) drops its interest; a build nobody waits for any
  more is cancelled (dequeued, or its worker killed);
- no method blocks the caller except ``CompileJob.wait`` and ``close``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Protocol

from radixlm.constrained.base import CompiledGrammar, GrammarArtifact, GrammarBackend, GrammarSpec
from radixlm.errors import GrammarError

logger = logging.getLogger(__name__)


class Ticket(Protocol):
    """A pool's handle on one submitted build (``compile_workers.CompileTicket``)."""

    def done(self) -> bool: ...
    def result(self) -> Any: ...
    def wait(self, timeout: float | None = None) -> bool: ...
    def cancel(self) -> None: ...


class Pool(Protocol):
    def submit(self, key: Any, payload: Any) -> Ticket: ...
    def close(self) -> None: ...


def worker_init(recipe: Any) -> GrammarBackend:
    """Runs once in each compile worker: its own copy of the backend."""
    return recipe.build()


def worker_build(backend: GrammarBackend, spec: GrammarSpec) -> GrammarArtifact:
    """Runs in a compile worker for each spec."""
    return backend.build(spec)


class CompileJob:
    """One request's handle on a (possibly shared) compile."""

    def __init__(self, compiler: GrammarCompiler, spec: GrammarSpec, ticket: Ticket | None) -> None:
        self.spec = spec
        self._compiler = compiler
        self._ticket = ticket  # None: the grammar (or its failure) is in the cache already

    def ready(self) -> bool:
        return self._ticket is None or self._ticket.done()

    def result(self) -> CompiledGrammar:
        """The compiled grammar of a ready job; ``GrammarError`` if it failed."""
        return self._compiler._result(self.spec, self._ticket)

    def wait(self, timeout: float | None = None) -> CompiledGrammar:
        """Block until ready, then ``result()``."""
        if self._ticket is not None:
            self._ticket.wait(timeout)
        return self.result()

    def cancel(self) -> None:
        """The request no longer needs the grammar (it was aborted)."""
        if self._ticket is not None and not self._ticket.done():
            self._ticket.cancel()
            with self._compiler._lock:
                self._compiler._in_flight.discard(self.spec)


class GrammarCompiler:
    """Builds on ``pool``, loads with ``backend``; see the module docstring for invariants."""

    def __init__(
        self,
        backend: GrammarBackend,
        pool: Pool,
        cache_size: int = 256,
        failure_ttl_s: float = 60.0,
    ) -> None:
        self.backend = backend
        self.pool = pool
        self.cache_size = cache_size
        self.failure_ttl_s = failure_ttl_s
        self.num_compiles = 0  # builds started (a test can prove "compiled once")
        self.num_hits = 0  # submits served by the cache or by a build in flight
        self._in_flight: set[GrammarSpec] = set()  # the pool shares one build per spec
        self._lock = threading.Lock()
        # spec → a loaded grammar, or (the error, when it failed)
        self._cache: OrderedDict[GrammarSpec, CompiledGrammar | tuple[GrammarError, float]] = (
            OrderedDict()
        )

    def submit(self, spec: GrammarSpec) -> CompileJob:
        """A job for ``spec``: served by the cache, or by a (shared) build on the pool."""
        with self._lock:
            entry = self._cache.get(spec)
            if isinstance(entry, tuple) and time.monotonic() - entry[1] > self.failure_ttl_s:
                del self._cache[spec]  # a stale failure: compile again
                entry = None
            if entry is not None:
                self._cache.move_to_end(spec)
                self.num_hits += 1
                return CompileJob(self, spec, None)
            if spec in self._in_flight:
                self.num_hits += 1
            else:
                self._in_flight.add(spec)
                self.num_compiles += 1
        return CompileJob(self, spec, self.pool.submit(spec, spec))

    def _result(self, spec: GrammarSpec, ticket: Ticket | None) -> CompiledGrammar:
        with self._lock:
            entry = self._cache.get(spec)
        if entry is None and ticket is not None:
            entry = self._load(spec, ticket)
        if entry is None:
            raise GrammarError("the grammar was evicted before it was used; send the request again")
        if isinstance(entry, tuple):
            raise GrammarError(str(entry[0])) from entry[0]
        return entry

    def _load(self, spec: GrammarSpec, ticket: Ticket) -> CompiledGrammar | tuple:
        """Load a finished build into the cache (failures too, unless cancelled or timed out:
        another request may get a worker with more time)."""
        start = time.perf_counter()
        try:
            artifact = ticket.result()
            entry: CompiledGrammar | tuple = self.backend.load(artifact)
        except GrammarError as e:
            if "cancelled" in str(e):
                with self._lock:
                    self._in_flight.discard(spec)
                raise
            entry = (e, time.monotonic())
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # a backend bug, or a Rust panic (a BaseException in pyo3)
            logger.exception("compiling a %s grammar failed unexpectedly", spec.kind)
            error = GrammarError(
                f"cannot compile the {spec.kind} constraint ({type(e).__name__}: {e}); "
                "simplify it or report the problem"
            )
            entry = (error, time.monotonic())
        logger.debug("loaded a %s grammar in %.3f s", spec.kind, time.perf_counter() - start)
        with self._lock:
            self._in_flight.discard(spec)
            current = self._cache.get(spec)
            if current is not None and not isinstance(current, tuple):
                return current  # another job of the same build loaded it first
            self._cache[spec] = entry
            self._cache.move_to_end(spec)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return entry

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "compiles": self.num_compiles,
                "hits": self.num_hits,
                "cached": len(self._cache),
            }

    def close(self) -> None:
        """Stop the pool; jobs still building fail."""
        self.pool.close()
