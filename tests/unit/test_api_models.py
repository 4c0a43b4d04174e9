"""The typed API models (``server/api_models.py``) against the hand-written parsers they document:
the same field names, and, on a grid of probe values per field, the same verdict (the model
validates a body exactly when the parser, and the engine's sampling check behind it, accept
it). The few places where they differ on purpose are listed, each with its reason, and must
still differ. No server: the parsers run on the bundled tokenizer.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from radixlm.config import BUNDLED_MODEL
from radixlm.errors import RequestError
from radixlm.function_call.formats import get_format
from radixlm.sampling_params import SamplingParams as EngineSampling
from radixlm.server import api_models as m
from radixlm.server import openapi
from radixlm.server.chat_template import TEMPLATES
from radixlm.server.native_request import (
    GENERATE_FIELDS,
    NULL_ONLY_FIELDS,
    NativeLimits,
    parse_generate,
)
from radixlm.server.openai_fields import CHAT_FIELDS, COMPLETION_FIELDS
from radixlm.server.openai_protocol import parse_chat_request, parse_completion_request
from radixlm.tokenizer import load_tokenizer

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def field_names(model: type[BaseModel]) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


def test_request_models_have_exactly_the_parsers_fields():
    assert field_names(m.GenerateRequest) == GENERATE_FIELDS | NULL_ONLY_FIELDS
    assert field_names(m.SamplingParams) == set(EngineSampling.valid_keys())
    assert field_names(m.CompletionRequest) == COMPLETION_FIELDS
    assert field_names(m.ChatCompletionRequest) == CHAT_FIELDS


def test_sampling_defaults_are_the_engines():
    engine = EngineSampling.from_dict({})
    for name, f in m.SamplingParams.model_fields.items():
        if f.default is not None:
            assert getattr(engine, name) == f.default, name


# JSON Schema 2020-12 keywords (and OpenAPI's discriminator) a schema may use: a constraint that
# pydantic could not translate (it leaks as e.g. "ge") would otherwise go unnoticed.
KEYWORDS = set(
    "$ref $defs type enum const anyOf oneOf allOf not properties required additionalProperties "
    "patternProperties propertyNames items prefixItems minItems maxItems minLength maxLength "
    "pattern minimum maximum exclusiveMinimum exclusiveMaximum maxProperties title description "
    "default discriminator".split()
)
MAPS = {"properties", "patternProperties", "$defs"}  # their keys are names, not keywords


def _keywords(schema: Any, where: str = "#") -> list[str]:
    if isinstance(schema, list):
        return [k for i, s in enumerate(schema) for k in _keywords(s, f"{where}/{i}")]
    if not isinstance(schema, dict):
        return []
    out = [f"{where}/{k}" for k in schema if k not in KEYWORDS]
    for k, v in schema.items():
        if k in MAPS:
            out += [x for name, s in v.items() for x in _keywords(s, f"{where}/{k}/{name}")]
        elif k not in ("discriminator", "default", "const", "enum"):
            out += _keywords(v, f"{where}/{k}")
    return out


def test_component_schemas_use_only_json_schema_keywords():
    schemas = openapi.component_schemas()
    assert {"GenerateRequest", "ChatCompletionChunk", "SamplingParams"} <= set(schemas)
    assert _keywords({"$defs": schemas}) == []


# ---- the parsers' verdicts ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(BUNDLED_MODEL)


@pytest.fixture(scope="module")
def limits(tokenizer):
    # --max-n out of the way: the probes test types and ranges, not the server's limits
    return NativeLimits.for_server(tokenizer, 512, 512, max_n=10**6, reasoning=None)


@pytest.fixture(scope="module")
def backend(tokenizer):
    return SimpleNamespace(
        served_model_name="served",
        tokenizer=tokenizer,
        context_length=512,
        chat_template=TEMPLATES["plain"],
        tool_format=get_format("hermes"),
        reasoning=None,
        check_model=_check_model,
        check_strict_schema=lambda schema: None,
    )


def _check_model(model: Any) -> None:
    """Which names are served is the server's business (a 404); here: any string."""
    if model is not None and not isinstance(model, str):
        raise RequestError(f"the model {model!r} does not exist on this server")


def parser_accepts(route: str, body: dict, limits: NativeLimits, backend: Any) -> bool:
    """Whether the route's parser (and, for OpenAI, the native parse of its mapping) takes
    ``body``; anything but a RequestError fails the test."""
    try:
        if route == "generate":
            parse_generate(body, limits)
        else:
            parse = parse_completion_request if route == "completions" else parse_chat_request
            parse_generate(parse(body, backend).native, limits)
    except RequestError:
        return False
    return True


def model_accepts(model: type[BaseModel], body: dict) -> bool:
    try:
        model.model_validate_json(json.dumps(body))
    except ValidationError:
        return False
    return True


COMMON = [None, True, False, 0, 1, -1, 2, -3, 100, 2.0, 1.5, "", "a", [], [1], [1, 2], [-1],
          ["a"], [""], [None], [[1]], [[]], {}, {"1": 1.0}, {"a": 1}, {"type": "text"}]  # fmt: skip
EXTRA: dict[str, list[Any]] = {
    "logit_bias": [{"0": -100}, {"511": 1e6}, {"1": 1e7}, {"-1": 1}, {"1": None}],
    "stop_token_ids": [511, [0, 511]],
    "json_schema": [{"type": "object"}, "{}", True],
    "sampling_params": [{"max_new_tokens": 1}, [{"n": 2}], [None], {"bogus": 1}],
    "top_p": [0.5, 1e-9],
    "stream_options": [{"include_usage": True}, {"include_usage": 1}],
    "response_format": [
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}},
        {"type": "json_schema", "json_schema": {"schema": {}, "strict": True}},
        {"type": "json_schema", "json_schema": {"schema": {}, "strict": "yes"}},
        {"type": "json_schema", "json_schema": {"schema": "{}"}},
        {"type": "json_schema"},
        {"type": "xml"},
    ],
    "tools": [
        [TOOL],
        [TOOL, TOOL],
        [{"type": "function", "function": {"name": "a b"}}],
        [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}],
        [{"type": "retrieval"}],
    ],  # fmt: skip
    "tool_choice": [
        "none",
        "auto",
        "required",
        "any",
        {"type": "function", "function": {"name": "get_weather"}},
        {"type": "function", "function": {"name": 1}},
    ],  # fmt: skip
    "functions": [[TOOL["function"]], [{"name": "f", "strict": 1}]],
    "function_call": ["none", "auto", "required", {"name": "get_weather"}, {"name": 1}],
    "messages": [
        [{"role": "user", "content": "hi"}],
        [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}],
        [{"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "ann"}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        [{"role": "user", "content": [{"type": "text", "text": 1}]}],
        [{"role": "user"}],
        [{"role": "user", "content": None}],
        [{"role": "user", "content": "hi", "name": 1}],
        [{"role": "assistant"}],
        [
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": "21"},
        ],
        [{"role": "assistant", "tool_calls": []}],
        [{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}],
        [{"role": "assistant", "tool_calls": [{"type": "code", "function": {"name": "f"}}]}],
        [{"role": "assistant", "function_call": {"name": "f", "arguments": {"a": 1}}}],
        [{"role": "tool", "content": "21"}],
        [{"role": "function", "name": "f", "content": "21"}],
        [{"role": "bot", "content": "hi"}],
        [{"role": None, "content": "hi"}],
    ],  # fmt: skip
}
EXTRA["prompt"] = EXTRA["text"] = [["a", "b"], [[1, 2], [3]], [[1], []]]
EXTRA["input_ids"] = EXTRA["prompt"]

# (field, probe as JSON) -> why the model and the parser may disagree on it
DIFFER = {
    # the parsers treat an empty list like an absent constraint
    **{(k, "[]"): "parser: [] is no constraint" for k in ("regex", "json_schema", "ebnf")},
    ("suffix", "false"): "parser: any falsy suffix is no suffix",
    ("suffix", "0"): "parser: any falsy suffix is no suffix",
    ("suffix", "[]"): "parser: any falsy suffix is no suffix",
    ("suffix", "{}"): "parser: any falsy suffix is no suffix",
    ("best_of", "2"): "across fields: best_of must equal n",
    ("best_of", "100"): "across fields: best_of must equal n",
    ("min_new_tokens", "100"): "across fields: at most max_new_tokens (2 in the base body)",
    ("min_tokens", "100"): "across fields: at most max_tokens (2 in the base body)",
    ("tools", json.dumps([TOOL, TOOL])): "across items: tool names must be unique",
    ("logprob_start_len", "[1, 2]"): "across fields: one entry per prompt",
    ("top_logprobs_num", "[1, 2]"): "across fields: one entry per prompt",
    ("text", "null"): "across fields: exactly one of text and input_ids",
    ("input_ids", "null"): "across fields: exactly one of text and input_ids",
    ("require_reasoning", "true"): "the server's setup: needs --reasoning-parser",
    ("continue_final_message", "true"): "across fields: the last message must be assistant's",
}


def _probes(field: str) -> list[Any]:
    return COMMON + EXTRA.get(field, [])


ROUTES = {
    "generate": (m.GenerateRequest, {"text": "Hi", "sampling_params": {"max_new_tokens": 2}}),
    "completions": (m.CompletionRequest, {"prompt": "Hi", "max_tokens": 2}),
    "chat": (
        m.ChatCompletionRequest,
        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
    ),  # fmt: skip
}
# Fields probed with a base that the rule across fields needs (so only the field's type shows).
BASE_FOR = {
    "input_ids": {"text": None},
    "text": {},
    "stream_options": {"stream": True},
    "top_logprobs": {"logprobs": True},
    "tool_choice": {"tools": [TOOL]},
    "parallel_tool_calls": {"tools": [TOOL]},
    "function_call": {"functions": [TOOL["function"]]},
}


def _cases() -> list[tuple[str, str, Any]]:
    cases = []
    for route, (model, _) in ROUTES.items():
        fields = list(field_names(model))
        for field in sorted(fields):
            if field == "separate_reasoning":
                continue  # read only with --reasoning-parser (unread, it takes anything)
            cases += [(route, field, v) for v in _probes(field)]
    for field in sorted(field_names(m.SamplingParams)):
        cases += [("sampling", field, v) for v in _probes(field)]
    return cases


def _body(route: str, field: str, value: Any) -> tuple[type[BaseModel], str, dict]:
    if route == "sampling":
        model, base = ROUTES["generate"]
        sp = {**base["sampling_params"], field: value}
        return model, "generate", {**base, "sampling_params": sp}
    model, base = ROUTES[route]
    body = {**base, **BASE_FOR.get(field, {}), field: value}
    return model, route, {k: v for k, v in body.items() if v is not None or k == field}


@pytest.mark.parametrize("route, field, value", _cases())
def test_model_and_parser_agree(route, field, value, limits, backend):
    model, parser_route, body = _body(route, field, value)
    by_model = model_accepts(model, body)
    by_parser = parser_accepts(parser_route, body, limits, backend)
    why = DIFFER.get((field, json.dumps(value)))
    if why is None:
        assert by_model == by_parser, f"model {by_model}, parser {by_parser}: {body}"
    else:
        assert by_model != by_parser, f"listed as differing ({why}) but both say {by_model}"
