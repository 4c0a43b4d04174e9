"""Tool calls in the DSL (``gen(..., tools=...)``) on a tiny random qwen2 model with the hermes
test template: the in-process engine, a real server over the native API, and the same server
through the OpenAI backend.

``required`` and named choices are constrained by the format's grammar, so every sample at
temperature 1 is a call whose arguments validate against the tool's schema; a model → tool →
model program renders its history exactly as the server's chat path renders the same messages.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import jsonschema
import pytest

import radixlm_lang as sgl
from radixlm_lang.backend.engine import EngineBackend
from radixlm_lang.backend.mock import MockBackend
from radixlm_lang.backend.runtime_endpoint import Runtime
from radixlm_lang.tools import ChatToolRenderer, ToolPositionError, ToolsUnsupportedError
from tests.tool_defs import SCHEMAS, TOOLS

HERMES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "chat_templates", "hermes.jinja")
QUESTIONS = ["Weather in Paris?", "Add 2 and 3.", "Hello", "What now?", "Tell me a story."]


# ---- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine_backend(tiny_models) -> Iterator[EngineBackend]:
    backend = EngineBackend(
        model_path=tiny_models["qwen2"],
        tool_chat_template=HERMES,
        context_length=4096,
        max_total_tokens=20000,
        num_threads=1,
    )
    yield backend
    backend.shutdown()


@pytest.fixture(scope="module")
def runtime(tiny_models, tmp_path_factory) -> Iterator[Runtime]:
    log = tmp_path_factory.mktemp("lang_tools_server") / "server.log"
    rt = Runtime(
        model_path=tiny_models["qwen2"],
        served_model_name="tiny",
        chat_template=HERMES,
        context_length=4096,
        max_total_tokens=20000,
        num_threads=1,
        log_file=str(log),
    )
    yield rt
    rt.shutdown()


@pytest.fixture(scope="module", params=["engine", "endpoint"])
def native(request):
    """Both native backends; the endpoint takes its template from the server's settings."""
    if request.param == "engine":
        return request.getfixturevalue("engine_backend")
    return request.getfixturevalue("runtime").endpoint


@sgl.function
def ask(s, question, tool_choice, parallel=None):
    s += sgl.user(question)
    s += sgl.assistant(
        sgl.gen(
            "reply",
            tools=TOOLS,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel,
            max_tokens=400,
        )  # fmt: skip
    )


@sgl.function
def two_turns(s, question):
    """model → tool → model: the tool's result answers each call, then the model answers."""
    s += sgl.system("You are terse.")
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("call", tools=TOOLS, tool_choice="required", max_tokens=200))
    for c in s.tool_calls("call"):
        s += sgl.tool({"ok": c["function"]["name"]}, tool_call_id=c["id"])
    s += sgl.assistant(sgl.gen("answer", tools=TOOLS, max_tokens=8, temperature=0))


def check_calls(calls, allowed=None) -> None:
    assert calls, "no tool call"
    for c in calls:
        assert c["type"] == "function" and c["id"].startswith("call_")
        assert allowed is None or c["function"]["name"] in allowed
        jsonschema.validate(json.loads(c["function"]["arguments"]), SCHEMAS[c["function"]["name"]])


def server_messages(st) -> list[dict]:
    """What an OpenAI client would send for the same chat: the calls as the model made them."""
    calls = st.tool_calls("call")
    msgs = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
    ]
    for c in calls:
        content = json.dumps({"ok": c["function"]["name"]})
        msgs.append({"role": "tool", "tool_call_id": c["id"], "content": content})
    return msgs


# ---- no model --------------------------------------------------------------------------------
def test_gen_validates_tools_when_built() -> None:
    with pytest.raises(ValueError, match="tools"):
        sgl.gen("x", tools=[{"type": "retrieval"}])
    with pytest.raises(ValueError, match="not among the tools"):
        sgl.gen("x", tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(ValueError, match="tool_choice 'required' needs a non-empty tools"):
        sgl.gen("x", tool_choice="required")
    with pytest.raises(ValueError, match="parallel_tool_calls"):
        sgl.gen("x", tools=TOOLS, parallel_tool_calls="yes")
    with pytest.raises(ValueError, match="choices or tools"):
        sgl.gen("x", choices=["a"], tools=TOOLS)
    assert sgl.gen("x", tool_choice="auto").tools is None  # no tools: an ordinary gen
    g = sgl.gen("x", tools=TOOLS, tool_choice="required")
    assert hash(g) == hash(sgl.gen("x", tools=TOOLS, tool_choice="required"))
    assert g.tools.request.mode == "required" and len(g.tools.request.tools) == 2


def test_a_backend_without_tools_and_a_misplaced_gen_are_errors() -> None:
    st = ask.run(question="hi", tool_choice="auto", backend=MockBackend())
    assert isinstance(st.error(), ToolsUnsupportedError) and "MockBackend" in str(st.error())

    @sgl.function
    def outside_a_turn(s):
        s += sgl.user("hi")
        s += sgl.gen("x", tools=TOOLS)

    @sgl.function
    def after_text(s):
        s += sgl.user("hi")
        s += sgl.assistant("Sure: " + sgl.gen("x", tools=TOOLS))

    for prog in (outside_a_turn, after_text):
        st = prog.run(backend=MockBackend())
        assert isinstance(st.error(), ToolPositionError), st.error()


def test_a_template_without_tool_format_names_the_parser_option(engine_backend) -> None:
    renderer = ChatToolRenderer.resolve(engine_backend.engine.tokenizer, "chatml", None)
    spec = sgl.gen("x", tools=TOOLS, tool_choice="required").tools
    with pytest.raises(ToolsUnsupportedError, match="tool_call_parser"):
        renderer.constrain({}, spec)
    none = sgl.gen("x", tools=TOOLS, tool_choice="none").tools
    renderer.constrain({}, none)  # nothing to parse: served


# ---- native backends -------------------------------------------------------------------------
def test_required_calls_parse_and_validate(native) -> None:
    """Samples at temperature 1: one call each without parallel calls, one or more with."""
    args = [{"question": q, "tool_choice": "required", "parallel": False} for q in QUESTIONS]
    states = ask.run_batch(args * 2, backend=native, temperature=1.0, num_threads=4)
    for st in states:
        assert st.error() is None, st.error()
        calls = st.tool_calls("reply")
        assert len(calls) == 1 and st["reply"] == ""
        check_calls(calls)
        assert st.messages()[-1] == {"role": "assistant", "content": "", "tool_calls": calls}
        assert st.get_meta_info("reply")["tool_calls"] == calls
    st = ask.run(question=QUESTIONS[0], tool_choice="required", temperature=1.0, backend=native)
    check_calls(st.tool_calls("reply"))  # parallel calls allowed: as many as the model writes


def test_named_choice_and_auto(native) -> None:
    named = {"type": "function", "function": {"name": "add"}}
    for _ in range(3):
        st = ask.run(question="Add 2 and 3.", tool_choice=named, temperature=1.0, backend=native)
        assert st.error() is None, st.error()
        check_calls(st.tool_calls("reply"), allowed={"add"})
    st = ask.run(question="Hello", tool_choice="auto", temperature=0, backend=native)
    # a random model does not write "<tool_call>" unprompted: all of it is content
    assert st.error() is None and st.tool_calls("reply") == []
    assert st["reply"] and "tool_calls" not in st.messages()[-1]


def test_two_turns_render_as_the_server_renders(native) -> None:
    from radixlm.server.chat_template import render_chat, render_text, special_tokens_of

    st = two_turns.run(question="Weather in Paris?", temperature=1.0, backend=native)
    assert st.error() is None, st.error()
    check_calls(st.tool_calls("call"))
    renderer = native.tool_renderer()
    tok = renderer.tokenizer
    msgs = server_messages(st)
    final = [e for e in st.trace() if e["name"] == "answer"][0]
    expected = render_text(
        renderer.template, msgs, special_tokens=special_tokens_of(tok), tools=TOOLS
    )
    assert final["prompt"] == expected
    assert "<tool_response>" in expected and expected.endswith("<|im_start|>assistant\n")
    ids = render_chat(renderer.template, tok, msgs, tools=TOOLS)
    assert final["meta_info"]["prompt_tokens"] == len(ids)
    # the first turn is a prefix of the second: the second hits the prefix cache
    assert final["meta_info"]["cached_tokens"] > 0
    roles = [m["role"] for m in st.messages()]
    assert roles == ["system", "user", "assistant"] + ["tool"] * len(msgs[3:]) + ["assistant"]


def test_a_special_token_trigger_is_kept_in_the_output(tmp_path_factory) -> None:
    """With ``<tool_call>`` a special token (as in Qwen's tokenizer) the grammar writes it as
    that token and the output keeps it (``skip_special_tokens`` off), so calls still parse."""
    import torch
    import transformers

    from radixlm.config import BUNDLED_MODEL
    from tests.conftest import VOCAB, _tiny_config

    path = str(tmp_path_factory.mktemp("special_trigger"))
    tok = transformers.AutoTokenizer.from_pretrained(BUNDLED_MODEL)
    tok.add_tokens(["<tool_call>", "</tool_call>"], special_tokens=True)
    config = _tiny_config("qwen2")
    config.vocab_size = VOCAB + 8
    torch.manual_seed(11)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    tok.save_pretrained(path)
    backend = EngineBackend(
        model_path=path, tool_chat_template=HERMES, context_length=4096, num_threads=1
    )
    try:
        renderer = backend.tool_renderer()
        spec = sgl.gen("x", tools=TOOLS, tool_choice="required").tools
        sp: dict = {}
        renderer.constrain(sp, spec)
        assert sp["skip_special_tokens"] is False and "<[" in sp["ebnf"]
        for question in QUESTIONS[:3]:
            st = ask.run(
                question=question, tool_choice="required", temperature=1.0, backend=backend
            )
            assert st.error() is None, st.error()
            check_calls(st.tool_calls("reply"))
            assert st.text().count("<tool_call>") == len(st.tool_calls("reply"))
    finally:
        backend.shutdown()


# ---- the OpenAI backend on the same server ---------------------------------------------------
@pytest.fixture(scope="module")
def openai_backend(runtime):
    pytest.importorskip("openai")
    return sgl.OpenAI("tiny", base_url=runtime.url + "/v1", api_key="unused", max_retries=0)


def test_openai_backend_calls_and_history(openai_backend, runtime) -> None:
    from radixlm.server.chat_template import render_chat

    for _ in range(3):
        st = ask.run(
            question="Add 2 and 3.", tool_choice="required", parallel=False, temperature=1.0,
            backend=openai_backend,
        )  # fmt: skip
        assert st.error() is None, st.error()
        assert len(st.tool_calls("reply")) == 1 and st["reply"] == ""
        check_calls(st.tool_calls("reply"))
    st = two_turns.run(question="Weather in Paris?", temperature=1.0, backend=openai_backend)
    assert st.error() is None, st.error()
    check_calls(st.tool_calls("call"))
    # the server saw the same messages as the native backend renders
    final = [e for e in st.trace() if e["name"] == "answer"][0]
    renderer = runtime.endpoint.tool_renderer()
    expected = render_chat(renderer.template, renderer.tokenizer, server_messages(st), tools=TOOLS)
    assert final["meta_info"]["prompt_tokens"] == len(expected)
