"""Interpreter semantics on the mock backend: ordering, blocking reads, run-ahead, roles,
fork/join, var_scope, stop strings, errors and the debug trace."""

from __future__ import annotations

import time

import pytest

import radixlm_lang as sgl
from radixlm_lang.backend.mock import MockBackend
from radixlm_lang.interpreter import ProgramError


def test_fills_and_gens_in_order_with_prompt_so_far() -> None:
    backend = MockBackend(["Paris", "Rome"])

    @sgl.function
    def prog(s, a):
        s += "Q1: " + a + "\nA: " + sgl.gen("x", max_tokens=4, stop="\n")
        s += "\nQ2: " + sgl.gen("y")

    st = prog.run(a="France?", backend=backend)
    assert st.text() == "Q1: France?\nA: Paris\nQ2: Rome"
    assert (st["x"], st.get_var("y")) == ("Paris", "Rome")
    first, second = backend.calls_of("generate")
    assert first.prompt.text == "Q1: France?\nA: "
    assert second.prompt.text == "Q1: France?\nA: Paris\nQ2: "
    assert first.params.max_new_tokens == 4 and first.params.stop == ("\n",)
    assert second.params.max_new_tokens == 128 and second.params.stop == ()
    assert st.get_meta_info("x")["prompt_tokens"] == 3
    assert "x" in st and "nope" not in st


def test_run_defaults_then_gen_overrides() -> None:
    backend = MockBackend()

    @sgl.function
    def prog(s):
        s += sgl.gen("a") + sgl.gen("b", temperature=0.5, max_tokens=7)

    prog.run(backend=backend, temperature=0.0, max_new_tokens=33, stop=["END"]).sync()
    a, b = (c.params for c in backend.calls_of("generate"))
    assert (a.temperature, a.max_new_tokens, a.stop) == (0.0, 33, ("END",))
    assert (b.temperature, b.max_new_tokens, b.stop) == (0.5, 7, ("END",))


def test_run_ahead_and_blocking_read() -> None:
    """Control flow continues while a gen is in flight; reading the variable waits for it."""
    backend = MockBackend(["slow"], delay=0.3)
    seen = {}

    @sgl.function
    def prog(s):
        s += sgl.gen("x")
        seen["after_submit"] = time.perf_counter()
        seen["ready_at_submit"] = s.stream_executor.variable_event["x"].is_set()
        seen["value"] = s["x"]
        seen["after_read"] = time.perf_counter()

    t0 = time.perf_counter()
    prog.run(backend=backend)
    assert seen["after_submit"] - t0 < 0.15
    assert seen["ready_at_submit"] is False
    assert seen["value"] == "slow"
    assert seen["after_read"] - t0 >= 0.29


def test_run_returns_before_program_finishes() -> None:
    backend = MockBackend(["late"], delay=0.3)

    @sgl.function
    def prog(s):
        s += "x" + sgl.gen("v")

    t0 = time.perf_counter()
    st = prog.run(backend=backend)
    assert time.perf_counter() - t0 < 0.15
    assert st["v"] == "late" and st.text() == "xlate"


def test_roles_messages_and_default_system_prompt() -> None:
    backend = MockBackend(["4", "8"], chat_template="qwen")

    @sgl.function
    def prog(s):
        s += sgl.user("2+2?")
        s += sgl.assistant(sgl.gen("a1"))
        with s.user():
            s += "  and 4+4?"
        with s.assistant():
            s += sgl.gen("a2")

    st = prog.run(backend=backend)
    assert st.messages() == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 4+4?"},
        {"role": "assistant", "content": "8"},
    ]
    assert st.text().startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert "<|im_start|>assistant\n8<|im_end|>\n" in st.text()
    call = backend.calls_of("generate")[0]
    assert call.params.stop == ("<|im_end|>",)  # the template's stop is always appended
    assert call.prompt.messages[-1] == {"role": "user", "content": "2+2?"}


def test_explicit_system_suppresses_default_and_begin_end_functions() -> None:
    backend = MockBackend(["ok"], chat_template="qwen")

    @sgl.function
    def prog(s):
        s += sgl.system("Be terse.")
        s += sgl.user_begin() + "hi" + sgl.user_end()
        s += sgl.assistant_begin() + sgl.gen("a", stop=["<|im_end|>", "x"]) + sgl.assistant_end()

    st = prog.run(backend=backend)
    assert [m["role"] for m in st.messages()] == ["system", "user", "assistant"]
    assert st.messages()[0]["content"] == "Be terse."
    assert backend.calls[0].params.stop == ("<|im_end|>", "x")


def test_nested_roles_is_an_error() -> None:
    @sgl.function
    def prog(s):
        with s.user():
            s += sgl.assistant("x")

    st = prog.run(backend=MockBackend())
    assert isinstance(st.error(), ValueError)


def test_var_scope_captures_text() -> None:
    @sgl.function
    def prog(s):
        s += "a "
        with s.var_scope("inner"):
            s += "b " + sgl.gen("g")
        s += " c"

    st = prog.run(backend=MockBackend(["G"]))
    assert st["inner"] == "b G" and st.text() == "a b G c"


def test_fork_join_gathers_lists_and_prefills_prefix_once() -> None:
    backend = MockBackend(lambda p, _: "D" + p.text[-2])

    @sgl.function
    def prog(s):
        s += "shared prefix. " + sgl.gen("t", max_tokens=3)
        forks = s.fork(3)
        for i, f in enumerate(forks):
            f += f"branch {i}:" + sgl.gen("detail")
        forks += " tail"
        forks.join()
        s += " summary"

    st = prog.run(backend=backend)
    assert st["detail"] == ["D0", "D1", "D2"]
    assert len(st.get_meta_info("detail")) == 3
    cache_calls = backend.calls_of("cache_prefix")
    assert len(cache_calls) == 1
    assert cache_calls[0].prompt.text == "shared prefix. D."  # parent text at the fork
    assert st.text() == "shared prefix. D. summary"  # gather mode leaves the parent text
    for call in backend.calls_of("generate")[1:]:
        assert call.prompt.text.startswith("shared prefix. D.branch ")
    kinds = [e["kind"] for e in st.trace()]
    assert kinds == ["generate", "cache_prefix", "generate", "generate", "generate"]
    assert all(e["cached_tokens"] == 17 for e in st.trace()[2:])


def test_fork_group_iadd_forms_and_single_fork_no_prefill() -> None:
    backend = MockBackend(lambda p, _: p.text[-1])

    @sgl.function
    def prog(s):
        s += "p"
        one = s.fork(1)
        one.join()
        forks = s.fork(2)
        forks += ["a", "b"]
        forks += lambda i: str(i) + sgl.gen("v")
        forks.join()
        with s.copy() as c:
            c += "z" + sgl.gen("w")

    st = prog.run(backend=backend)
    assert st["v"] == ["0", "1"] and st["w"] == ["z"]
    assert len(backend.calls_of("cache_prefix")) == 1


def test_join_concate_and_append() -> None:
    @sgl.function
    def prog(s):
        s += "x"
        forks = s.fork(2)
        forks += lambda i: f"[{i}]"
        forks.join(mode="concate_and_append")

    assert prog.run(backend=MockBackend()).text() == "x[0][1]"


def test_backend_error_surfaces_on_state() -> None:
    """Errors never escape run(): s.error() holds the first one; a variable that was not
    produced raises ProgramError (SGLang: KeyError); earlier variables stay readable."""

    def errors(kind, prompt):
        return RuntimeError("boom") if prompt.text.endswith("B:") else None

    after = {}

    @sgl.function
    def prog(s):
        s += "A:" + sgl.gen("a")
        s += "B:" + sgl.gen("b")
        s += "C:" + sgl.gen("c")
        after["a"] = s["a"]
        s["b"]  # raises ProgramError: ends the function, recorded on the state
        after["unreached"] = True

    backend = MockBackend(errors=errors)
    st = prog.run(backend=backend)
    assert isinstance(st.error(), RuntimeError) and str(st.error()) == "boom"
    assert after == {"a": "gen0"}
    with pytest.raises(ProgramError) as info:
        st["c"]
    assert info.value.__cause__ is st.error()
    assert len(backend.calls_of("generate")) == 2  # "c" was never sent
    assert st.trace()[-1]["error"] == "RuntimeError('boom')"
    assert st.text() == "A:gen0B:"


def test_user_code_exception_propagates() -> None:
    @sgl.function
    def prog(s):
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        prog.run(backend=MockBackend())


def test_select_appends_decision_and_meta() -> None:
    backend = MockBackend(
        select_logprobs=lambda p, ch: [[[-1.0, 1, "x"]], [[-0.5, 2, "y"]]],
    )

    @sgl.function
    def prog(s):
        s += "Pick: " + sgl.gen("c", choices=["cat", "dog"]) + "."

    st = prog.run(backend=backend)
    assert st["c"] == "dog" and st.text() == "Pick: dog."
    assert st.get_meta_info("c")["normalized_prompt_logprobs"] == [-1.0, -0.5]


def test_trace_text_and_html() -> None:
    @sgl.function
    def prog(s):
        s += "<b>" + sgl.gen("x", max_tokens=2)

    st = prog.run(backend=MockBackend(["&"]))
    (entry,) = st.trace()
    assert entry["kind"] == "generate" and entry["output"] == "&"
    assert entry["params"]["max_new_tokens"] == 2 and entry["latency"] >= 0
    assert "generate [x]" in st.trace_text()
    page = st.trace_html()
    assert page.startswith("<!DOCTYPE html>") and "&lt;b&gt;" in page and "<script" not in page


def test_state_after_end_rejects_submit() -> None:
    @sgl.function
    def prog(s):
        s += "x"

    st = prog.run(backend=MockBackend())
    with pytest.raises(RuntimeError):
        st += "more"


def test_default_backend_and_helpers() -> None:
    @sgl.function
    def prog(s):
        s += sgl.gen("x")

    old = sgl.global_config.default_backend
    try:
        sgl.global_config.default_backend = None
        with pytest.raises(ValueError, match="set_default_backend"):
            prog.run()
        backend = MockBackend(["y"])
        sgl.set_default_backend(backend)
        assert prog()["x"] == "y"  # calling the function runs it
        assert sgl.flush_cache() is True
        assert sgl.get_server_info()["backend"] == "mock"
    finally:
        sgl.global_config.default_backend = old
