"""GrammarCompiler: shared in-flight compiles, LRU cache, failures, timeouts, non-blocking."""

from __future__ import annotations

import threading
import time

import pytest

from radixlm.constrained.base import CompiledGrammar, GrammarBackend, GrammarSpec
from radixlm.constrained.compiler import GrammarCompiler
from radixlm.constrained.outlines_backend import OutlinesBackend
from radixlm.constrained.vocabulary import TokenVocabulary
from radixlm.errors import GrammarError

WAIT = 10.0  # seconds a test waits for something that should take milliseconds


class _Compiled(CompiledGrammar):
    def __init__(self, spec: GrammarSpec) -> None:
        self.spec = spec

    def matcher(self):
        raise NotImplementedError


class FakeBackend(GrammarBackend):
    """Counts compiles; a spec listed in ``gates`` blocks until its event is set."""

    vocab_size = 32

    def __init__(self) -> None:
        self.calls: list[GrammarSpec] = []
        self.started: dict[str, threading.Event] = {}
        self.gates: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def gate(self, value: str) -> threading.Event:
        self.started[value] = threading.Event()
        self.gates[value] = threading.Event()
        return self.gates[value]

    def compile(self, spec: GrammarSpec) -> CompiledGrammar:
        with self._lock:
            self.calls.append(spec)
        if spec.value in self.gates:
            self.started[spec.value].set()
            assert self.gates[spec.value].wait(WAIT)
        if spec.value.startswith("bad"):
            raise GrammarError(f"invalid regex: {spec.value}")
        if spec.value == "crash":
            raise ZeroDivisionError("division by zero")
        return _Compiled(spec)


def regex(value: str) -> GrammarSpec:
    return GrammarSpec("regex", value)


def wait_ready(job, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not job.ready():
        assert time.monotonic() < deadline, "job never became ready"
        time.sleep(0.002)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def compiler(backend):
    c = GrammarCompiler(backend, max_workers=2, cache_size=4, timeout_s=WAIT)
    yield c
    for gate in backend.gates.values():
        gate.set()
    c.close()


def test_identical_concurrent_submits_compile_once(backend, compiler) -> None:
    gate = backend.gate("a+")
    jobs, barrier = [], threading.Barrier(8)

    def submit() -> None:
        barrier.wait()
        jobs.append(compiler.submit(regex("a+")))

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(jobs) == 8 and not any(job.ready() for job in jobs)
    gate.set()
    results = {id(job.wait()) for job in jobs}
    assert len(results) == 1  # one shared CompiledGrammar
    assert len(backend.calls) == 1 and compiler.num_compiles == 1 and compiler.num_hits == 7
    again = compiler.submit(regex("a+"))
    assert again.ready() and again.result() is jobs[0].result()  # served from the cache
    assert len(backend.calls) == 1


def test_different_specs_compile_in_parallel(backend, compiler) -> None:
    gates = [backend.gate("x"), backend.gate("y")]
    jobs = [compiler.submit(regex("x")), compiler.submit(regex("y"))]
    # Both compiles are running at once (each is blocked on its own gate).
    assert backend.started["x"].wait(WAIT) and backend.started["y"].wait(WAIT)
    for gate in gates:
        gate.set()
    assert [job.wait().spec.value for job in jobs] == ["x", "y"]


def test_slow_compile_does_not_block_other_specs(backend, compiler) -> None:
    backend.gate("slow")
    slow = compiler.submit(regex("slow"))
    assert backend.started["slow"].wait(WAIT)
    start = time.perf_counter()
    fast = compiler.submit(regex("fast"))
    assert time.perf_counter() - start < 0.5  # submit returned at once
    wait_ready(fast)
    assert fast.result().spec.value == "fast"
    assert not slow.ready()  # still compiling; ready() did not block either
    with pytest.raises(RuntimeError, match="before ready"):
        slow.result()


def test_timeout_fails_the_job_and_the_late_result_is_cached(backend) -> None:
    compiler = GrammarCompiler(backend, timeout_s=0.2)
    gate = backend.gate("big")
    job = compiler.submit(regex("big"))
    assert not job.ready()
    wait_ready(job)
    with pytest.raises(GrammarError, match=r"longer than 0.2 s.*--grammar-compile-timeout"):
        job.result()
    gate.set()
    later = compiler.submit(regex("big"))  # the compile finished in the background
    assert later.wait().spec.value == "big" and len(backend.calls) == 1
    compiler.close()


def test_failures_raise_grammar_error_and_are_cached_briefly(backend) -> None:
    compiler = GrammarCompiler(backend, timeout_s=WAIT, failure_ttl_s=0.3)
    job = compiler.submit(regex("bad("))
    wait_ready(job)
    with pytest.raises(GrammarError, match=r"invalid regex: bad\("):
        job.result()
    with pytest.raises(GrammarError, match=r"invalid regex: bad\("):
        compiler.submit(regex("bad(")).wait()
    assert len(backend.calls) == 1  # the failure was cached
    time.sleep(0.35)
    with pytest.raises(GrammarError, match=r"invalid regex: bad\("):
        compiler.submit(regex("bad(")).wait()
    assert len(backend.calls) == 2  # ... only for failure_ttl_s
    compiler.close()


def test_unexpected_exception_becomes_grammar_error(backend, compiler) -> None:
    with pytest.raises(GrammarError, match="ZeroDivisionError: division by zero"):
        compiler.submit(regex("crash")).wait()


def test_lru_evicts_least_recently_used(backend, compiler) -> None:
    for value in ("p", "q", "r", "s"):
        compiler.submit(regex(value)).wait()
    compiler.submit(regex("p")).wait()  # p is now the most recent
    compiler.submit(regex("t")).wait()  # evicts q
    assert compiler.stats()["cached"] == 4
    compiler.submit(regex("p")).wait()
    assert len(backend.calls) == 5
    compiler.submit(regex("q")).wait()
    assert len(backend.calls) == 6


def test_close_fails_queued_jobs(backend) -> None:
    compiler = GrammarCompiler(backend, max_workers=1, timeout_s=WAIT)
    gate = backend.gate("first")
    compiler.submit(regex("first"))
    assert backend.started["first"].wait(WAIT)
    queued = compiler.submit(regex("second"))
    compiler.close()
    gate.set()
    with pytest.raises(GrammarError, match="shut down"):
        queued.wait()


def test_real_backend_with_a_slow_compile(monkeypatch) -> None:
    vocab = TokenVocabulary([b"a", b"b", b"0", b"1", None], eos_token_ids=[4])
    backend = OutlinesBackend.from_vocabulary(vocab)
    real_compile = backend.compile

    def slow_compile(spec: GrammarSpec):
        if spec.value == "a+":
            time.sleep(0.5)
        return real_compile(spec)

    monkeypatch.setattr(backend, "compile", slow_compile)
    compiler = GrammarCompiler(backend, timeout_s=0.25)
    slow = compiler.submit(regex("a+"))
    start = time.perf_counter()
    fast = compiler.submit(regex("[01]b"))
    wait_ready(fast)
    assert time.perf_counter() - start < 0.25 and not slow.ready()
    m = fast.result().matcher()
    assert m.advance(3) and m.advance(1) and m.is_terminated()
    bad = compiler.submit(regex("(b"))
    with pytest.raises(GrammarError, match="not a valid regex"):
        bad.wait()
    wait_ready(slow)
    with pytest.raises(GrammarError, match="longer than 0.25 s"):
        slow.result()
    compiler.close()
