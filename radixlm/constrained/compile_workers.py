"""Grammar compiles in a pool of killable worker processes.

A compile that hangs, eats memory or crashes (a Rust abort, a segfault) takes down its worker,
never the caller: the worker is killed or dies, its job fails with a ``GrammarError``, and a
fresh worker takes its place. ``CompileWorkerPool.submit(key, payload)`` returns a
``CompileTicket`` at once; the caller polls ``ticket.done()`` (a flag read) and then takes
``ticket.result()``. A dispatcher thread owns the workers: it starts them, sends each job over
the worker's pipe, and waits on the pipes, the process sentinels and a wake-up pipe, with a
timeout for the nearest deadline.

Invariants:
- one responsibility: run ``compile_fn(state, payload)`` in another process, where
  ``state = init(init_arg)`` is built once per worker; results are not cached (the caller
  caches); ``init``/``compile_fn`` are module-level functions, payloads/results/errors pickle;
- identical keys share one job while it is queued or running; jobs start FIFO as workers free
  up, so one slow job never delays the others while another worker is free;
- a job's ``timeout_s`` counts from its start on a worker, never from submit; a job that
  outlives it, or whose every ticket was cancelled, has its worker killed (SIGKILL) and
  replaced; a queued job nobody wants is dropped before it starts;
- workers die with the parent (daemon processes plus ``PR_SET_PDEATHSIG``; the dispatcher thread
  starts them because that signal fires when the *thread* that started a process exits), and
  run under ``RLIMIT_AS`` = ``memory_limit_mb``;
- a ticket only raises ``GrammarError`` (a job's own ``GrammarError`` keeps its type);
- a worker whose ``init`` fails is retried at most once per queued job (no hot restart loop);
- no torch, outlines-core or llguidance imports; typed; no print, ``logging`` only.

Prefer a small ``init_arg`` (a path, not a vocabulary): one over a pipe buffer (64 KB) holds the
dispatcher in ``Process.start()`` until the new worker has started Python and read it (~0.1-0.5 s).
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import pickle
import resource
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from radixlm.errors import GrammarError
from radixlm.server.ipc import exit_when_parent_dies

logger = logging.getLogger(__name__)

_MAX_SLEEP_S = 1.0  # the dispatcher's longest wait; every event also wakes it through a pipe
_DAEMON_FLAG_LOCK = threading.Lock()


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start a spawned worker without it re-running the caller's ``__main__``.

    NOTE: ``spawn`` re-imports the parent's main script in the child (``init_main_from_path``),
    which fails for ``python -`` and re-runs the top level of an unguarded user script (which may
    build another Engine). A worker only needs importable module-level functions, so the main
    module's ``__file__``/``__spec__`` are hidden while the process starts.
    """
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main and k in main.__dict__}
    try:
        for key in saved:
            if key == "__spec__":
                main.__spec__ = None
            else:
                del main.__dict__[key]
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip, else a ``GrammarError`` that describes it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return GrammarError(f"{type(exc).__name__}: {exc}")


def _worker_main(
    conn: Connection,
    parent_pid: int,
    memory_limit_mb: int | None,
    init_arg: Any,
    init: Callable[[Any], Any],
    compile_fn: Callable[[Any, Any], Any],
) -> None:
    """A worker process: reply ``(True, None)`` once ``init`` ran, then ``(ok, value)`` per job."""
    exit_when_parent_dies(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if memory_limit_mb is not None:
        limit = memory_limit_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        state = init(init_arg)
    except BaseException as e:  # a pyo3 panic is a BaseException
        conn.send((False, _portable(e)))
        return
    conn.send((True, None))
    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:
            return
        try:
            conn.send((True, compile_fn(state, pickle.loads(data))))
        except BaseException as e:
            conn.send((False, _portable(e)))


@dataclass(eq=False)
class _Job:
    key: Hashable
    data: bytes  # the pickled payload
    interested: int = 0  # tickets not cancelled
    finished: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None

    def finish(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        self.finished.set()


@dataclass(eq=False)
class _Worker:
    process: Any  # a multiprocessing Process
    conn: Connection
    ready: bool = False  # init finished
    job: _Job | None = None
    deadline: float = math.inf  # of its job


class CompileTicket:
    """One caller's handle on a (possibly shared) job."""

    def __init__(self, pool: CompileWorkerPool, job: _Job) -> None:
        self._pool = pool
        self._job = job
        self._cancelled = False

    def done(self) -> bool:
        """The job finished or failed, or this ticket was cancelled (cheap: reads flags)."""
        return self._cancelled or self._job.finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until ``done()`` or ``timeout`` seconds passed; returns ``done()``."""
        return self._cancelled or self._job.finished.wait(timeout)

    def result(self, timeout: float | None = None) -> Any:
        """The job's value; ``GrammarError`` if it failed, timed out or was cancelled.

        Blocks like ``wait``; ``TimeoutError`` if still not done after ``timeout`` seconds."""
        if not self.wait(timeout):
            raise TimeoutError("the grammar compile has not finished yet")
        if self._cancelled:
            raise GrammarError("the grammar compile was cancelled")
        if self._job.error is not None:
            raise self._job.error.with_traceback(None)
        return self._job.value

    def cancel(self) -> bool:
        """Drop this ticket's interest (False if the job already finished): a job nobody wants
        any more is dropped from the queue, or its worker is killed."""
        return self._pool._cancel(self)


class CompileWorkerPool:
    """Runs ``compile_fn(state, payload)`` on ``num_workers`` processes; see the module doc."""

    def __init__(
        self,
        init: Callable[[Any], Any],
        init_arg: Any,
        compile_fn: Callable[[Any, Any], Any],
        num_workers: int = 2,
        timeout_s: float = 30.0,
        memory_limit_mb: int | None = 4096,
        start_method: str = "spawn",
    ) -> None:
        if num_workers < 1 or timeout_s <= 0:
            raise ValueError("num_workers must be >= 1 and timeout_s > 0")
        if start_method not in ("spawn", "fork"):  # a forkserver child is not our child
            raise ValueError(f"start_method must be 'spawn' or 'fork', not {start_method!r}")
        # init_arg goes first: the child reads it before importing the functions' modules
        # (torch, say), so a large one does not hold the dispatcher in Process.start()
        self._args = (memory_limit_mb, init_arg, init, compile_fn)
        self.num_workers = num_workers
        self.timeout_s = timeout_s
        self.memory_limit_mb = memory_limit_mb
        self._ctx = multiprocessing.get_context(start_method)
        self._lock = threading.Lock()
        self._queue: deque[_Job] = deque()
        self._jobs: dict[Hashable, _Job] = {}  # queued or running, by key
        self._workers: list[_Worker] = []
        self._closing = False
        self._init_failing = False
        self._spawned = 0
        self._stats = dict.fromkeys(
            ("started", "finished", "failed", "timeouts", "cancelled", "worker_restarts"), 0
        )
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="grammar-workers", daemon=True)
        self._thread.start()

    # ---- caller side -------------------------------------------------------------------

    def submit(self, key: Hashable, payload: Any) -> CompileTicket:
        """A ticket on the queued or running job of ``key``, or on a new job for ``payload``."""
        with self._lock:
            job = self._jobs.get(key)
            if job is None:
                job = _Job(key, pickle.dumps(payload, pickle.HIGHEST_PROTOCOL))
                if self._closing:
                    job.finish(error=GrammarError("the grammar compile pool is shut down"))
                else:
                    self._jobs[key] = job
                    self._queue.append(job)
                    self._wake()
            job.interested += 1
            return CompileTicket(self, job)

    def _cancel(self, ticket: CompileTicket) -> bool:
        with self._lock:
            job = ticket._job
            if ticket._cancelled or job.finished.is_set():
                return False
            ticket._cancelled = True
            job.interested -= 1
            if job.interested == 0:  # wake its waiters; a running one's worker gets killed
                job.finish(error=GrammarError("the grammar compile was cancelled"))
                self._stats["cancelled"] += 1
                if self._jobs.get(job.key) is job:
                    del self._jobs[job.key]
                if job in self._queue:
                    self._queue.remove(job)
                else:
                    self._wake()  # the dispatcher kills its worker
            return True

    def worker_pids(self) -> list[int]:
        """Pids of the live worker processes (ready or still running ``init``)."""
        with self._lock:
            return [w.process.pid for w in self._workers]

    def stats(self) -> dict[str, int]:
        """Job counts: started, finished, failed (timeouts included), timeouts, cancelled; and
        worker_restarts (workers started to replace a dead or killed one)."""
        with self._lock:
            return dict(self._stats)

    def close(self) -> None:
        """Stop the dispatcher, kill the workers, fail every pending ticket. Idempotent."""
        with self._lock:
            self._closing = True
            self._wake()
        self._thread.join()
        with self._lock:
            if self._wake_w >= 0:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = -1

    def __enter__(self) -> CompileWorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wake(self) -> None:
        """Wake the dispatcher (lock held)."""
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError):  # full: the dispatcher wakes anyway
                os.write(self._wake_w, b"x")

    # ---- dispatcher thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._closing:
                        return
                    self._kill_cancelled_and_late()
                    missing = self.num_workers - len(self._workers)
                    if self._init_failing:  # one probe at a time, only for a waiting job
                        starting = any(not w.ready for w in self._workers)
                        missing = min(missing, 1) if self._queue and not starting else 0
                for _ in range(missing):
                    self._spawn()
                with self._lock:
                    self._start_jobs()
                    waitables: list[Any] = [self._wake_r]
                    for w in self._workers:
                        waitables += [w.conn, w.process.sentinel]
                    deadline = min((w.deadline for w in self._workers), default=math.inf)
                sleep = min(_MAX_SLEEP_S, max(0.0, deadline - time.monotonic()))
                ready = wait(waitables, sleep)
                with self._lock:
                    if self._wake_r in ready:
                        with contextlib.suppress(BlockingIOError):
                            while os.read(self._wake_r, 4096):
                                pass
                    for w in list(self._workers):
                        if w in self._workers and (w.conn in ready or w.process.sentinel in ready):
                            self._serve(w, w.process.sentinel in ready)
        except Exception:
            logger.exception("the grammar compile dispatcher failed; grammar compiles fail now")
        finally:
            self._shutdown()

    def _spawn(self) -> None:
        parent_conn, child_conn = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_worker_main,
            args=(child_conn, os.getpid(), *self._args),
            name="radixlm-grammar-compile",
            daemon=True,
        )
        me = multiprocessing.current_process()
        with _DAEMON_FLAG_LOCK:  # multiprocessing forbids a daemon process (the scheduler) to
            daemon, me.daemon = me.daemon, False  # start children; ours die with it anyway
            try:
                with _main_module_hidden():
                    process.start()
            finally:
                me.daemon = daemon
        child_conn.close()
        with self._lock:
            if self._spawned >= self.num_workers:
                self._stats["worker_restarts"] += 1
            self._spawned += 1
            self._workers.append(_Worker(process, parent_conn))

    def _start_jobs(self) -> None:
        for w in self._workers:
            if not self._queue:
                return
            if w.ready and w.job is None:
                job = self._queue.popleft()
                try:
                    w.conn.send_bytes(job.data)
                except OSError:  # it just died: the job goes back to the front
                    self._queue.appendleft(job)
                    continue
                w.job, w.deadline = job, time.monotonic() + self.timeout_s
                self._stats["started"] += 1

    def _serve(self, w: _Worker, exited: bool) -> None:
        """Take ``w``'s replies; then, if it is gone, fail its job and remove it."""
        while w in self._workers:  # replies first: a worker may reply, then die
            try:
                if not w.conn.poll():
                    break
                ok, value = w.conn.recv()
            except (EOFError, OSError):
                exited = True
                break
            except Exception as e:  # a reply this process cannot unpickle
                ok, value = False, GrammarError(f"{type(e).__name__}: {e}")
            self._on_reply(w, ok, value)
        if not exited or w not in self._workers:
            return
        code = self._remove(w)
        how = f"killed by {signal.Signals(-code).name}" if code and code < 0 else f"exit {code}"
        if not w.ready:
            self._init_failed(f"the worker process died while starting ({how})")
        elif w.job is not None and w.job.interested:
            self._fail(
                w.job,
                GrammarError(
                    f"the grammar compile worker died ({how}); the grammar may need too much "
                    "memory or hit a bug in the grammar compiler"
                ),
            )

    def _on_reply(self, w: _Worker, ok: bool, value: Any) -> None:
        if not w.ready:
            if ok:
                w.ready, self._init_failing = True, False
            else:
                self._remove(w)
                self._init_failed(f"{type(value).__name__}: {value}")
            return
        job, w.job, w.deadline = w.job, None, math.inf
        if job is None or not job.interested:
            return  # cancelled while running
        if ok:
            self._stats["finished"] += 1
            self._jobs.pop(job.key, None)
            job.finish(value=value)
            return
        error = value
        if isinstance(value, MemoryError):
            error = GrammarError(
                f"compiling the grammar needed more than {self.memory_limit_mb} MB"
            )
        elif not isinstance(value, GrammarError):
            error = GrammarError(f"cannot compile the grammar ({type(value).__name__}: {value})")
        if error is not value:
            error.__cause__ = value
        self._fail(job, error)

    def _init_failed(self, why: str) -> None:
        """A worker's ``init`` failed: fail the next job if no worker can serve it."""
        logger.error("a grammar compile worker failed to start: %s", why)
        self._init_failing = True
        if self._queue and not any(w.ready for w in self._workers):
            job = self._queue.popleft()
            self._fail(job, GrammarError(f"the grammar compile worker failed to start ({why})"))

    def _kill_cancelled_and_late(self) -> None:
        now = time.monotonic()
        for w in list(self._workers):
            if w.job is None or (w.job.interested and now < w.deadline):
                continue
            self._remove(w)
            if w.job.interested:
                self._stats["timeouts"] += 1
                self._fail(
                    w.job,
                    GrammarError(
                        f"compiling the constraint (regex, JSON schema or grammar) took longer "
                        f"than {self.timeout_s:g} s; simplify it or raise "
                        "--grammar-compile-timeout"
                    ),
                )

    def _fail(self, job: _Job, error: GrammarError) -> None:
        if self._jobs.get(job.key) is job:
            del self._jobs[job.key]
        self._stats["failed"] += 1
        job.finish(error=error)

    def _remove(self, w: _Worker) -> int | None:
        """Kill ``w`` (if still alive), reap it, forget it; returns its exit code."""
        self._workers.remove(w)
        w.process.kill()
        w.process.join()
        code = w.process.exitcode
        w.process.close()
        w.conn.close()
        return code

    def _shutdown(self) -> None:
        with self._lock:
            self._closing = True
            for w in list(self._workers):
                self._remove(w)
            for job in list(self._jobs.values()):
                self._fail(job, GrammarError("the grammar compile pool is shut down"))
            self._queue.clear()
