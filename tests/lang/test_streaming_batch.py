"""Streaming (text_iter / text_async_iter), run_batch (order, tuples, precache), bind."""

from __future__ import annotations

import asyncio
import time

import radixlm_lang as sgl
from radixlm_lang.backend.mock import MockBackend

LONG_PREFIX = "You are a careful assistant. Answer every question in one short sentence. " * 2


def test_text_iter_whole_text_streams_chunks() -> None:
    backend = MockBackend(["abcdefgh"], stream_chunk_chars=3, delay=0.02)

    @sgl.function
    def prog(s):
        s += "P:" + sgl.gen("x") + "!"

    st = prog.run(backend=backend, stream=True)
    chunks = list(st.text_iter())
    assert "".join(chunks) == "P:abcdefgh!" == st.text()
    assert len(chunks) >= 2
    assert backend.calls[0].kind == "generate_stream"


def test_text_iter_one_variable_arrives_incrementally() -> None:
    backend = MockBackend(["first", "0123456789"], stream_chunk_chars=2, delay=0.02)

    @sgl.function
    def prog(s):
        s += sgl.gen("a") + " then " + sgl.gen("b")

    st = prog.run(backend=backend, stream=True)
    chunks = list(st.text_iter("b"))
    assert chunks == ["01", "23", "45", "67", "89"]
    assert st["b"] == "0123456789" and st["a"] == "first"
    assert st.get_meta_info("b")["completion_tokens"] == 1


def test_text_iter_without_stream_yields_final_once() -> None:
    @sgl.function
    def prog(s):
        s += "x" + sgl.gen("v")

    st = prog.run(backend=MockBackend(["yz"]))
    assert list(st.text_iter()) == ["xyz"]
    assert list(st.text_iter("v")) == ["yz"]


def test_text_iter_of_a_select_and_of_a_missing_var() -> None:
    @sgl.function
    def prog(s):
        s += sgl.select("c", choices=["left", "right"])

    st = prog.run(backend=MockBackend(), stream=True)
    assert list(st.text_iter("c")) == ["left"]
    assert list(st.text_iter("never")) == []


def test_text_async_iter_with_meta() -> None:
    backend = MockBackend(["hello world"], stream_chunk_chars=4)

    @sgl.function
    def prog(s):
        s += sgl.gen("v")

    async def collect(var, meta):
        st = prog.run(backend=backend, stream=True)
        return [c async for c in st.text_async_iter(var, return_meta_data=meta)]

    pairs = asyncio.run(collect("v", True))
    assert "".join(c for c, _ in pairs) == "hello world"
    assert all("cached_tokens" in m for _, m in pairs)
    backend.responses.append("again")
    assert "".join(asyncio.run(collect(None, False))) == "again"


def test_streaming_error_ends_iteration() -> None:
    @sgl.function
    def prog(s):
        s += "a" + sgl.gen("v")

    backend = MockBackend(errors=lambda kind, p: ValueError("bad"))
    st = prog.run(backend=backend, stream=True)
    assert "".join(st.text_iter()) == "a"
    assert isinstance(st.error(), ValueError)


def test_run_batch_order_tuples_and_precache() -> None:
    backend = MockBackend(lambda p, _: p.text.split("Q: ")[-1].upper(), delay=0.01)

    @sgl.function
    def prog(s, q, tag="-"):
        s += LONG_PREFIX
        s += "Q: " + q + sgl.gen("a", max_tokens=8) + tag

    batch = [{"q": f"q{i}"} for i in range(12)] + [("last", "!")]
    states = prog.run_batch(batch, num_threads=4, temperature=0, backend=backend)
    assert [s["a"] for s in states] == [f"Q{i}" for i in range(12)] + ["LAST"]
    assert states[-1].text().endswith("!")
    prefills = backend.calls_of("cache_prefix")
    assert [c.prompt.text for c in prefills] == [LONG_PREFIX + "Q: "]  # constant text up to q
    assert backend.calls[0].kind == "cache_prefix"  # before any program of the batch
    assert all(c.params.temperature == 0 for c in backend.calls_of("generate"))
    assert all(s.trace()[0]["cached_tokens"] == len(LONG_PREFIX) + 3 for s in states)


def test_run_batch_no_precache_for_short_prefix_or_single_item() -> None:
    backend = MockBackend()

    @sgl.function
    def prog(s, q):
        s += "short " + q + sgl.gen("a")

    prog.run_batch([{"q": "x"}, {"q": "y"}], num_threads=1, progress_bar=True, backend=backend)
    prog2 = sgl.function(lambda s, q: None)
    prog2.run_batch([{"q": "x"}], backend=backend)
    assert backend.calls_of("cache_prefix") == []


def test_run_batch_runs_in_parallel() -> None:
    backend = MockBackend(delay=0.2)

    @sgl.function
    def prog(s, i):
        s += sgl.gen("a")

    t0 = time.perf_counter()
    states = prog.run_batch([{"i": i} for i in range(8)], backend=backend)
    assert time.perf_counter() - t0 < 1.0
    assert sorted(s["a"] for s in states) == [f"gen{i}" for i in range(8)]


def test_bind_and_decorator_with_arguments() -> None:
    @sgl.function(num_api_spec_tokens=8)
    def prog(s, greeting, name):
        s += greeting + ", " + name

    hello = prog.bind(greeting="Hello")
    assert hello.run(name="Ada", backend=MockBackend()).text() == "Hello, Ada"
    states = hello.run_batch([("Bob",), {"name": "Cy"}], backend=MockBackend())
    assert [s.text() for s in states] == ["Hello, Bob", "Hello, Cy"]
    assert prog.num_api_spec_tokens == 8
