"""Real responses against the response models (``server/api_responses.py``) and the schemas
``/openapi.json`` publishes: every shape the result builders make — single and batch, ``n``,
logprobs with alternatives and token text, echo, stops, constraints, streams with usage,
tool calls (and the legacy ``function_call``), reasoning — and the error bodies. The models
forbid undeclared fields, so a field added to a response without its model fails here.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.server.api_check import CHAT, CMPL, GEN, Contract, send

PROMPT = "Once upon a time"
SP = {"max_new_tokens": 4}
HI = [{"role": "user", "content": "Hello"}]
LOGPROBS = {"return_logprob": True, "logprob_start_len": 0, "top_logprobs_num": 2,
            "return_text_in_logprobs": True}  # fmt: skip
USAGE = {"stream": True, "stream_options": {"include_usage": True}}

OK, STREAM, ERROR = "ok", "stream", "4xx"
CASES = [  # (name, route, body, what the reply is)
    ("plain", GEN, {"text": PROMPT, "sampling_params": SP}, OK),
    ("batch n=2", GEN, {"text": [PROMPT, "Lily"], "sampling_params": {**SP, "n": 2}}, OK),
    ("ids logprobs", GEN, {"input_ids": [1, 300, 400], "sampling_params": SP, **LOGPROBS}, OK),
    ("logprobs no top", GEN, {"text": PROMPT, "sampling_params": SP, "return_logprob": True},
     OK),
    ("stop string", GEN, {"text": PROMPT, "sampling_params": {"max_new_tokens": 32,
                          "stop": [" ", "e"], "temperature": 0}}, OK),
    ("prefill only", GEN, {"text": PROMPT, "sampling_params": {"max_new_tokens": 0}}, OK),
    ("regex", GEN, {"text": PROMPT, "sampling_params": {"regex": "(yes|no)", **SP}}, OK),
    ("unenforced", GEN, {"text": PROMPT, "sampling_params": {**SP, "json_schema": {
        "type": "array", "items": {"type": "integer"}, "uniqueItems": True}}}, OK),
    ("stream", GEN, {"text": PROMPT, "sampling_params": SP, "stream": True}, STREAM),
    ("stream batch", GEN, {"text": [PROMPT, "Lily"], "sampling_params": SP, "stream": True,
                           **LOGPROBS}, STREAM),
    ("unknown field", GEN, {"text": PROMPT, "bogus": 1}, ERROR),
    ("plain", CMPL, {"prompt": PROMPT, "max_tokens": 4}, OK),
    ("echo logprobs n=2", CMPL, {"prompt": [PROMPT, "Lily"], "max_tokens": 3, "n": 2,
                                 "echo": True, "logprobs": 2}, OK),
    ("ids", CMPL, {"prompt": [[1, 300], [1, 400]], "max_tokens": 3, "logprobs": 0}, OK),
    ("regex", CMPL, {"prompt": PROMPT, "max_tokens": 4, "regex": "(yes|no)"}, OK),
    ("stream usage", CMPL, {"prompt": PROMPT, "max_tokens": 4, "logprobs": 1, "echo": True,
                            **USAGE}, STREAM),
    ("stream n=2", CMPL, {"prompt": PROMPT, "max_tokens": 4, "n": 2, "stream": True}, STREAM),
    ("unknown model", CMPL, {"prompt": PROMPT, "model": "gpt-9"}, ERROR),
    ("bad value", CMPL, {"prompt": PROMPT, "logprobs": 99}, ERROR),
    ("plain", CHAT, {"messages": HI, "max_tokens": 4}, OK),
    ("logprobs", CHAT, {"messages": HI, "max_tokens": 4, "logprobs": True, "top_logprobs": 2},
     OK),
    ("json_object", CHAT, {"messages": HI, "max_tokens": 4,
                           "response_format": {"type": "json_object"}}, OK),
    ("stream usage", CHAT, {"messages": HI, "max_tokens": 4, "n": 2, "logprobs": True,
                            "top_logprobs": 1, **USAGE}, STREAM),
    ("tools without a parser", CHAT, {"messages": HI, "tools": [
        {"type": "function", "function": {"name": "f"}}]}, ERROR),
]  # fmt: skip


@pytest.fixture(scope="module")
def contract(server) -> Contract:
    status, doc = server.get("/openapi.json")
    assert status == 200
    return Contract(doc)


@pytest.mark.parametrize(
    "route, body, kind", [c[1:] for c in CASES], ids=[f"{c[1]} {c[0]}" for c in CASES]
)
def test_responses_match_the_models(server, contract, route, body, kind):
    reply = send(server.url, route, json.dumps(body).encode())
    assert contract.check(route, reply) == kind, reply.text[:300]


def test_openapi_document_is_valid(contract):
    doc = contract.doc
    assert doc["openapi"].startswith("3.")
    ops = [op for methods in doc["paths"].values() for op in methods.values()]
    ids = [op["operationId"] for op in ops]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    schemas = doc["components"]["schemas"]
    for route, request in ((GEN, "GenerateRequest"), (CMPL, "CompletionRequest"),
                           (CHAT, "ChatCompletionRequest")):  # fmt: skip
        op = doc["paths"][route]["post"]
        body = op["requestBody"]
        assert body["required"] is True
        assert body["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{request}"
        }
        ok = op["responses"]["200"]["content"]
        assert {"application/json", "text/event-stream"} <= set(ok)
    refs = set(_refs(doc))
    assert refs, "no schema references"
    assert refs <= {f"#/components/schemas/{name}" for name in schemas}, refs - set(schemas)
    try:
        from openapi_spec_validator import validate
    except ImportError:  # not a dependency: the structure checks above stand in for it
        return
    validate(doc)


def _refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


# ---- tool calls and reasoning ----------------------------------------------------------
TEMPLATES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "chat_templates")
CITY = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}},
        "required": ["city"], "additionalProperties": False}  # fmt: skip
FUNCTION = {"name": "get_weather", "parameters": CITY}
END_THINK = {"513": 8}  # </think>: the random model ends its thinking at once
TOOLS = {"tools": [{"type": "function", "function": FUNCTION}], "tool_choice": "required",
         "parallel_tool_calls": False, "max_tokens": 60, "logit_bias": END_THINK, "seed": 1}  # fmt: skip
LEGACY = {"functions": [FUNCTION], "function_call": {"name": "get_weather"}, "max_tokens": 60,
          "logit_bias": END_THINK, "seed": 1}  # fmt: skip

FEATURE_CASES = [
    ("tool call", {"messages": HI, **TOOLS}, "tool_calls"),
    ("tool call stream", {"messages": HI, **TOOLS, **USAGE}, "tool_calls"),
    ("legacy function_call", {"messages": HI, **LEGACY}, "function_call"),
    ("legacy function_call stream", {"messages": HI, **LEGACY, "stream": True}, "function_call"),
    ("reasoning", {"messages": HI, "max_tokens": 8, "logit_bias": {"513": 3}, "seed": 1}, None),
    ("reasoning stream", {"messages": HI, "max_tokens": 8, "stream": True}, None),
    (
        "history with calls",
        {
            "messages": [
                *HI,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
            ],
            "max_tokens": 4,
            "tools": TOOLS["tools"],
        },
        None,
    ),  # fmt: skip
]


@pytest.fixture(scope="module")
def features(start_server, tmp_path_factory):
    """A tiny Qwen3-shaped model with ``<think>`` and ``<tool_call>`` tokens, the hermes
    parser and the qwen3 reasoning parser."""
    from tests.conftest import make_tiny_model_with_tokens

    path = make_tiny_model_with_tokens(
        str(tmp_path_factory.mktemp("api_features")),
        ["<think>", "</think>", "<tool_call>", "</tool_call>"], special=False, arch="qwen3",
    )  # fmt: skip
    return start_server(
        "--model-path", path, "--served-model-name", "tiny", "--context-length", "4096",
        "--chat-template", os.path.join(TEMPLATES, "hermes_think.jinja"),
        "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3",
    )  # fmt: skip


@pytest.mark.parametrize("body, finish", [c[1:] for c in FEATURE_CASES],
                         ids=[c[0] for c in FEATURE_CASES])  # fmt: skip
def test_tool_and_reasoning_responses_match_the_models(features, body, finish):
    doc = features.get("/openapi.json")[1]
    reply = send(features.url, CHAT, json.dumps(body).encode())
    assert Contract(doc).check(CHAT, reply) == ("stream" if body.get("stream") else "ok")
    if body.get("stream"):
        choices = [c for e in reply.events()[:-1] for c in e["choices"]]
        deltas = [c["delta"] for c in choices]
        if finish is not None:
            assert any(finish in d for d in deltas), deltas
        else:
            assert any("reasoning_content" in d for d in deltas), deltas
        reasons = [c["finish_reason"] for c in choices if c["finish_reason"]]
    else:
        message = reply.json()["choices"][0]["message"]
        assert "reasoning_content" in message
        if finish is not None:
            assert finish in message, message
        reasons = [reply.json()["choices"][0]["finish_reason"]]
    if finish is not None:
        assert reasons == [finish], reasons
