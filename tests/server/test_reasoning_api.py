"""``--reasoning-parser`` through the OpenAI SDK: thinking in ``reasoning_content``, streamed
and not, and constraints (response_format, tools) that apply to the answer only.

The tiny Qwen3-shaped model's tokenizer has ``<think>`` / ``</think>`` as added tokens (ids 512 / 513, as
Qwen3's are); its template opens the thinking block in the prompt (DeepSeek-R1 style) unless
``enable_thinking`` is false, which closes an empty one (Qwen3 style). ``logit_bias`` on
``</think>`` makes the random model end its thinking after a few tokens.
"""

from __future__ import annotations

import json
import os

import jsonschema
import pytest

openai = pytest.importorskip("openai")

TEMPLATE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "chat_templates")
END_THINK = "513"
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 99}},
    "required": ["answer"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}
MESSAGES = [{"role": "user", "content": "What is 1 + 2?"}]


@pytest.fixture(scope="module")
def server(start_server, tmp_path_factory):
    from tests.conftest import make_tiny_model_with_tokens

    root = tmp_path_factory.mktemp("think_tokens")
    path = make_tiny_model_with_tokens(
        str(root), ["<think>", "</think>"], special=False, arch="qwen3"
    )
    return start_server(
        "--model-path", path, "--served-model-name", "tiny", "--context-length", "4096",
        "--chat-template", os.path.join(TEMPLATE, "hermes_think.jinja"),
        "--reasoning-parser", "qwen3",
    )  # fmt: skip


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _constrained(client, **kw):
    return client.chat.completions.create(
        model="tiny", messages=MESSAGES, response_format=RESPONSE_FORMAT, temperature=1.0,
        max_tokens=200, logit_bias={END_THINK: 4}, **kw,
    )  # fmt: skip


def test_reasoning_then_a_constrained_answer(client):
    r = _constrained(client, n=12, seed=0)
    thought = 0
    for ch in r.choices:
        msg = ch.message
        assert ch.finish_reason == "stop", ch
        jsonschema.validate(json.loads(msg.content), SCHEMA)  # the answer is constrained
        assert "<think>" not in msg.content and "</think>" not in msg.content
        if msg.reasoning_content:
            thought += 1
            assert "</think>" not in msg.reasoning_content
    # the thinking is free text: the grammar would not have allowed it
    assert thought >= 3, [c.message.reasoning_content for c in r.choices]


def _stream(client, **kw):
    thought, content, finish = "", "", None
    for chunk in _constrained(client, stream=True, **kw):
        ch = chunk.choices[0]
        thought += getattr(ch.delta, "reasoning_content", None) or ""
        content += ch.delta.content or ""
        finish = ch.finish_reason or finish
    return thought, content, finish


def test_streamed_reasoning_equals_the_split_text(client):
    """Streamed deltas add up to the parser's split of the same stream's raw text (streamed
    and whole text can differ where a random model writes invalid UTF-8)."""
    from radixlm.reasoning import get_reasoning_format

    fmt = get_reasoning_format("qwen3")
    thoughts = []
    for seed in (1, 2, 3, 4):
        thought, content, finish = _stream(client, seed=seed)
        _, raw, raw_finish = _stream(client, seed=seed, extra_body={"separate_reasoning": False})
        assert finish == raw_finish == "stop"
        assert (thought, content) == fmt.split(raw, inside=True)
        assert json.loads(content)["answer"] in range(100)
        thoughts.append(thought)
    assert sum(bool(t) for t in thoughts) >= 2, thoughts  # streamed thinking, not only answers


def test_thinking_off_in_the_template(client):
    """``enable_thinking: false``: the prompt closes an empty block, so the constraint holds
    from the first token and there is no reasoning."""
    r = _constrained(
        client, n=6, seed=4, extra_body={"chat_template_kwargs": {"enable_thinking": False}}
    )
    for ch in r.choices:
        assert ch.message.reasoning_content is None
        jsonschema.validate(json.loads(ch.message.content), SCHEMA)


def test_separate_reasoning_false_keeps_the_raw_text(client):
    r = _constrained(client, seed=5, extra_body={"separate_reasoning": False})
    msg = r.choices[0].message
    assert getattr(msg, "reasoning_content", None) is None
    thinking, sep, answer = msg.content.rpartition("</think>")
    assert sep and json.loads(answer.strip())  # thinking, marker and answer in one text


def test_tool_calls_after_reasoning(client):
    tools = [{"type": "function", "function": {"name": "add", "parameters": SCHEMA}}]
    r = client.chat.completions.create(
        model="tiny", messages=MESSAGES, tools=tools, tool_choice="required", temperature=1.0,
        n=6, seed=6, max_tokens=300, logit_bias={END_THINK: 4}, parallel_tool_calls=False,
    )  # fmt: skip
    for ch in r.choices:
        assert ch.finish_reason == "tool_calls", ch
        (call,) = ch.message.tool_calls
        jsonschema.validate(json.loads(call.function.arguments), SCHEMA)
    assert any(ch.message.reasoning_content for ch in r.choices)


def test_native_require_reasoning(server):
    """The native route takes SGLang's ``require_reasoning``: the constraint starts after the
    thinking (the prompt here opens the block itself)."""
    body = {
        "text": "<|im_start|>assistant\n<think>\n",
        "sampling_params": {"json_schema": json.dumps(SCHEMA), "temperature": 1.0,
                            "max_new_tokens": 200, "logit_bias": {END_THINK: 4}, "sampling_seed": 7},
        "require_reasoning": True,
    }  # fmt: skip
    status, out = server.post("/generate", body)
    assert status == 200, out
    thinking, sep, answer = out["text"].partition("</think>")
    assert sep and thinking  # free text, then the marker, then the constrained answer
    jsonschema.validate(json.loads(answer.strip()), SCHEMA)
    status, out = server.post("/generate", {**body, "require_reasoning": "yes"})
    assert status == 400 and "require_reasoning" in json.dumps(out)
