"""CompileWorkerPool: results and errors cross the process boundary, identical keys share a job,
timeouts count from a job's start, hung/cancelled/crashed/out-of-memory compiles cost only their
worker, and close() leaves no process behind.

Ordering comes from files in tmp_path (a fake compile touches ``started`` and blocks until
``release`` exists), never from sleeping and hoping. The fakes are module-level so spawned
workers import them by reference.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import threading
import time
from pathlib import Path

import pytest

from radixlm.constrained.compile_workers import CompileWorkerPool
from radixlm.errors import GrammarError

WAIT_S = 20.0  # generous bound on anything that should happen "soon" (a 2-core CI box)


class SchemaTooDeep(GrammarError):
    """A GrammarError subclass: its type must survive the trip back."""


def fake_init(arg: str) -> str:
    """Builds the worker state; ``fail:<path>`` appends to <path> and raises."""
    if arg.startswith("fail:"):
        with open(arg[5:], "a") as f:
            f.write("x")
        raise ValueError("the vocabulary is broken")
    return arg


def fake_compile(state: str, payload: tuple) -> object:
    op, *args = payload
    if op == "echo":
        return (state, args[0])
    if op == "raise":
        raise SchemaTooDeep(args[0])
    if op == "raise_value":
        raise ValueError(args[0])
    if op == "count":  # append to a file: how many times did this run?
        with open(args[0], "a") as f:
            f.write("x")
        return "counted"
    if op == "log":
        with open(args[0], "a") as f:
            f.write(args[1])
        return "logged"
    if op == "block":  # write our pid to `started`, return once `release` exists
        started, release = args
        Path(started).write_text(str(os.getpid()))
        deadline = time.monotonic() + 60  # never outlive the test run if nobody kills us
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.01)
        return "released"
    if op == "alloc":
        return len(bytearray(args[0]))
    if op == "abort":
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.abort()
    raise AssertionError(op)


def wait_for(path: Path) -> int:
    """Wait until a `block` job wrote `path`; returns the pid of the worker running it."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.005)
    raise AssertionError(f"{path} never appeared")


def new_pids(pool: CompileWorkerPool, old: set[int], count: int = 1) -> set[int]:
    """Wait until `count` workers not in `old` are alive."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        fresh = set(pool.worker_pids()) - old
        if len(fresh) >= count:
            return fresh
        time.sleep(0.005)
    raise AssertionError("no replacement worker")


def block(tmp: Path, name: str) -> tuple[tuple, Path, Path]:
    """A payload that blocks until `release` exists, and its two signal files."""
    started, release = tmp / f"{name}.started", tmp / f"{name}.release"
    return ("block", str(started), str(release)), started, release


def alive(pid: int) -> bool:
    """The process runs (a zombie nobody reaped yet counts as dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def make_pool():
    pools: list[CompileWorkerPool] = []

    def make(**kw) -> CompileWorkerPool:
        kw = {"init": fake_init, "init_arg": "S", "compile_fn": fake_compile, **kw}
        pools.append(CompileWorkerPool(**kw))
        return pools[-1]

    yield make
    for pool in pools:
        pool.close()


def test_results_and_errors_come_back(make_pool):
    pool = make_pool(num_workers=1)
    ok = pool.submit("a", ("echo", {"x": [1, 2]}))
    typed = pool.submit("b", ("raise", "nesting deeper than 64"))
    other = pool.submit("c", ("raise_value", "bad regex"))
    assert ok.result(WAIT_S) == ("S", {"x": [1, 2]})
    with pytest.raises(SchemaTooDeep, match="nesting deeper than 64"):
        typed.result(WAIT_S)
    with pytest.raises(GrammarError, match=r"ValueError: bad regex") as info:
        other.result(WAIT_S)
    assert isinstance(info.value.__cause__, ValueError)
    assert ok.done() and typed.done() and other.done()
    stats = pool.stats()
    assert (stats["started"], stats["finished"], stats["failed"]) == (3, 1, 2)


def test_identical_keys_share_one_job_and_jobs_start_fifo(make_pool, tmp_path):
    pool = make_pool(num_workers=1)
    gate, started, release = block(tmp_path, "gate")
    first = pool.submit("gate", gate)
    wait_for(started)
    counter, log = tmp_path / "count", tmp_path / "log"
    shared = [pool.submit("same", ("count", str(counter))) for _ in range(3)]
    later = [pool.submit(i, ("log", str(log), str(i))) for i in range(5)]
    release.touch()
    assert [t.result(WAIT_S) for t in shared] == ["counted"] * 3
    assert [t.result(WAIT_S) for t in later] == ["logged"] * 5
    assert first.result(WAIT_S) == "released"
    assert counter.read_text() == "x"  # one run for three tickets
    assert log.read_text() == "01234"  # in submit order
    assert pool.stats()["started"] == 1 + 1 + 5
    # Finished results are not cached: the same key runs again.
    assert pool.submit("same", ("count", str(counter))).result(WAIT_S) == "counted"
    assert counter.read_text() == "xx"


def test_timeout_excludes_time_in_the_queue(make_pool, tmp_path):
    timeout = 1.2
    pool = make_pool(num_workers=1, timeout_s=timeout)
    a1, a1_started, a1_release = block(tmp_path, "a1")
    a2, a2_started, a2_release = block(tmp_path, "a2")
    t1, t2 = pool.submit("a1", a1), pool.submit("a2", a2)
    wait_for(a1_started)
    queued_at = time.monotonic()
    quick = pool.submit("quick", ("echo", 1))
    time.sleep(0.7)  # a1 runs well under its timeout ...
    a1_release.touch()
    wait_for(a2_started)
    time.sleep(0.7)  # ... so does a2, but quick has now queued > timeout
    a2_release.touch()
    assert quick.result(WAIT_S) == ("S", 1)
    assert time.monotonic() - queued_at > timeout
    assert t1.result(WAIT_S) == t2.result(WAIT_S) == "released"
    assert pool.stats()["timeouts"] == 0


def test_hung_compile_is_killed_at_its_timeout(make_pool, tmp_path):
    pool = make_pool(num_workers=1, timeout_s=0.5)
    hang, started, _ = block(tmp_path, "hang")  # never released
    ticket = pool.submit("hang", hang)
    pid = wait_for(started)
    with pytest.raises(GrammarError, match=r"took longer than 0.5 s; simplify it"):
        ticket.result(WAIT_S)
    assert pool.submit("next", ("echo", 2)).result(WAIT_S) == ("S", 2)
    assert not alive(pid) and pid not in pool.worker_pids()
    stats = pool.stats()
    assert (stats["timeouts"], stats["failed"], stats["worker_restarts"]) == (1, 1, 1)


def test_a_slow_job_does_not_starve_the_others(make_pool, tmp_path):
    pool = make_pool(num_workers=2, timeout_s=60)
    hang, started, _ = block(tmp_path, "hang")
    slow = pool.submit("hang", hang)
    wait_for(started)
    quick = [pool.submit(i, ("echo", i)) for i in range(5)]
    assert [t.result(WAIT_S) for t in quick] == [("S", i) for i in range(5)]
    assert not slow.done()


def test_cancel(make_pool, tmp_path):
    pool = make_pool(num_workers=1, timeout_s=60)
    hang, hang_started, _ = block(tmp_path, "hang")
    queued, queued_started, _ = block(tmp_path, "queued")
    running = pool.submit("hang", hang)
    also_running = pool.submit("hang", hang)
    waiting = pool.submit("queued", queued)
    pid = wait_for(hang_started)

    assert waiting.cancel() and waiting.done() and not waiting.cancel()
    assert running.cancel()  # another ticket still wants the job: it keeps running
    assert not also_running.done() and alive(pid)
    with pytest.raises(GrammarError, match="cancelled"):
        running.result()
    assert also_running.cancel()  # nobody wants it now: its worker is killed
    new_pids(pool, {pid})
    assert not alive(pid)

    # FIFO: had the cancelled queued job survived, it would have started before this one.
    assert pool.submit("next", ("echo", 3)).result(WAIT_S) == ("S", 3)
    assert not queued_started.exists()
    stats = pool.stats()
    assert (stats["cancelled"], stats["started"], stats["worker_restarts"]) == (2, 2, 1)
    assert stats["failed"] == 0


def test_memory_limit(make_pool):
    pool = make_pool(num_workers=1, memory_limit_mb=512)
    with pytest.raises(GrammarError, match="needed more than 512 MB"):
        pool.submit("big", ("alloc", 2 << 30)).result(WAIT_S)
    assert pool.submit("small", ("alloc", 1 << 20)).result(WAIT_S) == 1 << 20


def test_dead_workers_fail_their_job_and_are_replaced(make_pool, tmp_path):
    pool = make_pool(num_workers=1, timeout_s=60)
    hang, started, _ = block(tmp_path, "hang")
    ticket = pool.submit("hang", hang)
    pid = wait_for(started)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(GrammarError, match="worker died \\(killed by SIGKILL\\)"):
        ticket.result(WAIT_S)
    with pytest.raises(GrammarError, match="worker died \\(killed by SIGABRT\\)"):
        pool.submit("abort", ("abort",)).result(WAIT_S)  # a Rust panic=abort, say
    assert pool.submit("next", ("echo", 4)).result(WAIT_S) == ("S", 4)
    assert pool.stats()["worker_restarts"] == 2 and pid not in pool.worker_pids()


def test_failing_init_fails_jobs_without_a_restart_loop(make_pool, tmp_path):
    attempts = tmp_path / "attempts"
    pool = make_pool(num_workers=1, init_arg=f"fail:{attempts}")
    for key in ("a", "b"):
        with pytest.raises(GrammarError, match="failed to start .*the vocabulary is broken"):
            pool.submit(key, ("echo", key)).result(WAIT_S)
    tries = len(attempts.read_text())
    assert tries <= 3  # the constructor's worker, then at most one per job
    time.sleep(0.3)  # (a hot restart loop would keep trying; this only catches one, never flakes)
    assert len(attempts.read_text()) == tries and pool.worker_pids() == []


def test_close_fails_pending_tickets_and_leaves_no_process(make_pool, tmp_path):
    pool = make_pool(num_workers=2, timeout_s=60)
    hang, started, _ = block(tmp_path, "hang")
    running = pool.submit("hang", hang)
    wait_for(started)
    pids = new_pids(pool, set(), count=2)
    queued = [pool.submit(i, hang) for i in range(3)]  # one runs, two queue (all hang)
    pool.close()
    for t in [running, *queued]:
        with pytest.raises(GrammarError, match="shut down"):
            t.result(0)
    assert not any(alive(pid) for pid in pids) and pool.worker_pids() == []
    assert not [p for p in multiprocessing.active_children() if p.pid in pids]
    with pytest.raises(GrammarError, match="shut down"):
        pool.submit("late", ("echo", 5)).result(0)
    pool.close()  # idempotent


def _pool_in_a_daemon_process(out: str) -> None:
    with CompileWorkerPool(fake_init, "D", fake_compile, num_workers=1) as pool:
        Path(out).write_text(repr(pool.submit("k", ("echo", 6)).result(WAIT_S)))


def test_works_inside_a_daemon_process(tmp_path):
    """The scheduler is a daemonic multiprocessing child, which may not start children as is."""
    out = tmp_path / "out"
    child = multiprocessing.get_context("spawn").Process(
        target=_pool_in_a_daemon_process, args=(str(out),), daemon=True
    )
    child.start()
    child.join(WAIT_S)
    assert child.exitcode == 0 and out.read_text() == repr(("D", 6))


def test_workers_outlive_the_thread_that_made_the_pool(make_pool):
    """PR_SET_PDEATHSIG fires when the *thread* that started a process exits."""
    pools = []

    def make() -> None:
        pools.append(make_pool(num_workers=1))
        pools[0].submit("up", ("echo", 0)).result(WAIT_S)  # the worker set its PDEATHSIG

    maker = threading.Thread(target=make)
    maker.start()
    maker.join()
    assert pools[0].submit("k", ("echo", 7)).result(WAIT_S) == ("S", 7)
    assert pools[0].stats()["worker_restarts"] == 0


def _pool_then_hang(tmp: str) -> None:
    pool = CompileWorkerPool(fake_init, "P", fake_compile, num_workers=2)
    hang, started, _ = block(Path(tmp), "hang")  # a busy worker only dies of PDEATHSIG
    pool.submit("hang", hang)
    wait_for(started)
    pids = new_pids(pool, set(), count=2)
    Path(tmp, "pids").write_text(" ".join(map(str, pids)))
    time.sleep(60)


def test_workers_die_with_their_parent(tmp_path):
    pids_file = tmp_path / "pids"
    parent = multiprocessing.get_context("spawn").Process(
        target=_pool_then_hang, args=(str(tmp_path),), daemon=True
    )
    parent.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while not (pids_file.exists() and pids_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.01)
        pids = [int(p) for p in pids_file.read_text().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
    finally:
        parent.kill()
        parent.join()
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(alive(p) for p in pids)
