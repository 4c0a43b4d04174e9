"""Tool calling through the OpenAI SDK on tiny random models, one server per call format.

``required`` and a named ``tool_choice`` are constrained by the format's grammar: at
temperature 1 every sampled output is well-formed calls whose arguments validate against the
tool's schema (checked with jsonschema), streamed or not. ``auto`` is a lazy grammar: free text
until the model writes the trigger, a constrained call from there. The ``special`` server's
tokenizer has ``<tool_call>`` / ``</tool_call>`` as special tokens, as Qwen's has.
"""

from __future__ import annotations

import json
import os

import jsonschema
import pytest

from tests.tool_defs import SCHEMAS, TOOLS

openai = pytest.importorskip("openai")

TEMPLATES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "chat_templates")
FAMILIES = ("hermes", "llama3_json", "mistral")
# Each family on the model shape that writes it (Qwen2.5 / Llama 3.x / Mistral).
ARCH = {"hermes": "qwen2", "llama3_json": "llama", "mistral": "mistral"}

PROMPTS = ["Weather in Paris?", "Add 2 and 3.", "Hello", "What now?", "Tell me a story."]


@pytest.fixture(scope="module")
def special_server(start_server, tmp_path_factory):
    from tests.conftest import make_tiny_model_with_tokens

    root = tmp_path_factory.mktemp("tool_tokens")
    path = make_tiny_model_with_tokens(str(root), ["<tool_call>", "</tool_call>"], special=True)
    return start_server(
        "--model-path", path, "--served-model-name", "tiny",
        "--chat-template", os.path.join(TEMPLATES, "hermes.jinja"), "--context-length", "4096",
    )  # fmt: skip


@pytest.fixture(scope="module")
def servers(start_server, tiny_models):
    return {
        name: start_server(
            "--model-path",
            tiny_models[ARCH[name]],
            "--served-model-name",
            "tiny",
            "--chat-template",
            os.path.join(TEMPLATES, f"{name}.jinja"),
            "--context-length",
            "4096",
        )  # fmt: skip
        for name in FAMILIES
    }


def _client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _check_calls(calls, allowed=None):
    assert calls, "no tool call"
    for c in calls:
        assert c.type == "function" and c.id.startswith("call_")
        assert allowed is None or c.function.name in allowed
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])


@pytest.mark.parametrize("family", FAMILIES)
def test_required_calls_always_parse_and_validate(servers, family):
    """50 samples at temperature 1 (5 prompts x n=10), one call each; then 10 with parallel
    calls allowed (as many as the model writes before it stops)."""
    c = _client(servers[family])
    samples = 0
    for prompt in PROMPTS:
        r = c.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": prompt}], tools=TOOLS,
            tool_choice="required", parallel_tool_calls=False, temperature=1.0, n=10,
            max_tokens=300, seed=len(prompt),
        )  # fmt: skip
        for ch in r.choices:
            assert ch.finish_reason == "tool_calls", ch
            assert len(ch.message.tool_calls) == 1
            _check_calls(ch.message.tool_calls)
            samples += 1
    assert samples == 50
    r = c.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": PROMPTS[0]}], tools=TOOLS,
        tool_choice="required", temperature=1.0, n=10, max_tokens=1500, seed=7,
    )  # fmt: skip
    for ch in r.choices:
        assert ch.finish_reason == "tool_calls", ch
        _check_calls(ch.message.tool_calls)


@pytest.mark.parametrize("family", FAMILIES)
def test_named_choice_single_call_streamed(servers, family):
    c = _client(servers[family])
    for seed in range(3):
        stream = c.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Add 2 and 3."}], tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "add"}},
            parallel_tool_calls=False, temperature=1.0, max_tokens=200, seed=seed, stream=True,
        )  # fmt: skip
        calls: dict[int, dict] = {}
        finish = None
        for chunk in stream:
            ch = chunk.choices[0]
            for d in ch.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
                entry["id"] = d.id or entry["id"]
                if d.function is not None:
                    entry["name"] = d.function.name or entry["name"]
                    entry["arguments"] += d.function.arguments or ""
            finish = ch.finish_reason or finish
        assert finish == "tool_calls" and list(calls) == [0]
        assert calls[0]["name"] == "add" and calls[0]["id"].startswith("call_")
        jsonschema.validate(json.loads(calls[0]["arguments"]), SCHEMAS["add"])


def test_history_with_tool_results_and_errors(servers):
    c = _client(servers["hermes"])
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]  # fmt: skip
    r = c.chat.completions.create(
        model="tiny", messages=history, tools=TOOLS, tool_choice="required", max_tokens=200
    )
    _check_calls(r.choices[0].message.tool_calls)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(
            model="tiny", messages=history[:1], tools=TOOLS, tool_choice="required",
            response_format={"type": "json_object"},
        )  # fmt: skip
    assert e.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(
            model="tiny", messages=history[:1], tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )  # fmt: skip
    assert e.value.body["param"] == "tool_choice" and "not among the tools" in str(e.value)


def test_auto_without_a_call_is_content(servers):
    c = _client(servers["hermes"])
    r = c.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello"}], tools=TOOLS,
        temperature=0, max_tokens=16,
    )  # fmt: skip
    ch = r.choices[0]
    # a random model does not write "<tool_call>" unprompted: plain content, no calls
    assert ch.message.tool_calls is None and ch.finish_reason in ("stop", "length")
    assert isinstance(ch.message.content, str)


def test_auto_with_a_special_trigger_token(special_server):
    """The trigger is one special token: biased to it, every sample starts a call at once and
    the grammar makes it valid, streamed or not; `required` names the token too."""
    c = _client(special_server)
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    r = c.chat.completions.create(
        model="tiny", messages=msgs, tools=TOOLS, tool_choice="auto", temperature=1.0, n=10,
        seed=1, max_tokens=300, parallel_tool_calls=False, logit_bias={"512": 100},
    )  # fmt: skip
    for ch in r.choices:
        assert ch.finish_reason == "tool_calls", ch
        assert len(ch.message.tool_calls) == 1 and ch.message.content is None
        _check_calls(ch.message.tool_calls)
    stream = c.chat.completions.create(
        model="tiny", messages=msgs, tools=TOOLS, tool_choice="auto", temperature=1.0, seed=2,
        max_tokens=300, parallel_tool_calls=False, logit_bias={"512": 100}, stream=True,
    )  # fmt: skip
    args, names, finish, content = "", [], None, ""
    for chunk in stream:
        ch = chunk.choices[0]
        content += ch.delta.content or ""
        for d in ch.delta.tool_calls or []:
            if d.function is not None:
                names += [d.function.name] if d.function.name else []
                args += d.function.arguments or ""
        finish = ch.finish_reason or finish
    assert finish == "tool_calls" and len(names) == 1 and "<tool_call>" not in content
    jsonschema.validate(json.loads(args), SCHEMAS[names[0]])
    r = c.chat.completions.create(
        model="tiny", messages=msgs, tools=TOOLS, tool_choice="required", temperature=1.0,
        n=5, seed=4, max_tokens=300,
    )  # fmt: skip
    for ch in r.choices:
        assert ch.finish_reason == "tool_calls"
        _check_calls(ch.message.tool_calls)
