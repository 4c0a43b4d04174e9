"""OpenAI protocol: request validation/mapping tables, responses and stream deltas built from
hand-made native results (no model, no server)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from radixlm.config import BUNDLED_MODEL
from radixlm.errors import CapacityError, RequestError
from radixlm.server.chat_template import TEMPLATES, ChatTemplate, render_chat
from radixlm.server.openai_errors import OpenAIRequestError, error_body, parse_json_body
from radixlm.server.openai_protocol import parse_chat_request, parse_completion_request
from radixlm.server.openai_results import RequestAbortedError, StreamState, build_response
from radixlm.tokenizer import load_tokenizer

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def backend():
    return SimpleNamespace(
        served_model_name="served",
        tokenizer=load_tokenizer(BUNDLED_MODEL),
        context_length=512,
        chat_template=TEMPLATES["plain"],
        check_model=lambda model: None,  # the model check is tested with a server
    )


def native(parse, body, backend) -> dict:
    out = parse({"rid": "r", **body}, backend).native
    assert out.pop("rid") == "r"
    return out


# ---- requests ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body, expected",
    [
        ({"prompt": "Hi"}, {"text": "Hi", "sampling_params": {"max_new_tokens": 16, "n": 1}}),
        (
            {"prompt": ["a", "b"], "max_tokens": None},
            {"text": ["a", "b"], "sampling_params": {"max_new_tokens": 512, "n": 1}},
        ),
        (
            {"prompt": [1, 5, 9], "max_tokens": 0},
            {"input_ids": [1, 5, 9], "sampling_params": {"max_new_tokens": 0, "n": 1}},
        ),
        (
            {"prompt": [[1, 5], [1]]},
            {"input_ids": [[1, 5], [1]], "sampling_params": {"max_new_tokens": 16, "n": 1}},
        ),
        (
            {
                "prompt": "Hi",
                "n": 2,
                "seed": 3,
                "stop": "\n",
                "temperature": 0.5,
                "top_p": 0.9,
                "presence_penalty": 0.1,
                "frequency_penalty": 0.2,
                "logit_bias": {"5": 1},
                "min_tokens": 2,
                "top_k": 4,
                "min_p": 0.1,
                "repetition_penalty": 1.1,
                "stop_token_ids": [7],
                "ignore_eos": True,
                "user": "u",
                "best_of": 2,
                "some_future_field": {"ignored": True},
            },
            {
                "text": "Hi",
                "sampling_params": {
                    "max_new_tokens": 16,
                    "n": 2,
                    "sampling_seed": 3,
                    "stop": ["\n"],
                    "temperature": 0.5,
                    "top_p": 0.9,
                    "presence_penalty": 0.1,
                    "frequency_penalty": 0.2,
                    "logit_bias": {"5": 1},
                    "min_new_tokens": 2,
                    "top_k": 4,
                    "min_p": 0.1,
                    "repetition_penalty": 1.1,
                    "stop_token_ids": [7],
                    "ignore_eos": True,
                },
            },
        ),
        (
            {"prompt": "Hi", "logprobs": 2, "echo": True, "stream": True},
            {
                "text": "Hi",
                "sampling_params": {"max_new_tokens": 16, "n": 1},
                "stream": True,
                "return_logprob": True,
                "top_logprobs_num": 2,
                "return_text_in_logprobs": True,
                "logprob_start_len": 0,
            },
        ),
        (
            {"prompt": "Hi", "regex": "[a-z]+"},
            {"text": "Hi", "sampling_params": {"max_new_tokens": 16, "n": 1, "regex": "[a-z]+"}},
        ),
    ],
)
def test_completion_requests(backend, body, expected):
    assert native(parse_completion_request, body, backend) == {"stream": False, **expected}


@pytest.mark.parametrize(
    "body, param, needle",
    [
        ({}, "prompt", "prompt must be a non-empty string"),
        ({"prompt": ""}, "prompt", "prompt must be"),
        ({"prompt": []}, "prompt", "prompt must be"),
        ({"prompt": ["a", 1]}, "prompt", "prompt must be"),
        ({"prompt": [[1], []]}, "prompt", "prompt must be"),
        ({"prompt": [True]}, "prompt", "prompt must be"),
        ({"prompt": "a", "max_tokens": -1}, "max_tokens", "max_tokens must be >= 0, got -1"),
        ({"prompt": "a", "max_tokens": 1.5}, "max_tokens", "max_tokens must be an integer"),
        ({"prompt": "a", "n": 0}, "n", "n must be >= 1, got 0"),
        ({"prompt": "a", "logprobs": 21}, "logprobs", "logprobs must be [0, 20], got 21"),
        ({"prompt": "a", "logprobs": True}, "logprobs", "logprobs must be an integer"),
        ({"prompt": "a", "echo": "yes"}, "echo", "echo must be true or false"),
        ({"prompt": "a", "stream": 1}, "stream", "stream must be true or false"),
        ({"prompt": "a", "stop": ["", "x"]}, "stop", "stop must be a non-empty string"),
        ({"prompt": "a", "stop": 3}, "stop", "stop must be"),
        ({"prompt": "a", "seed": "1"}, "seed", "seed must be an integer"),
        ({"prompt": "a", "suffix": "end"}, "suffix", "suffix is not supported"),
        ({"prompt": "a", "best_of": 3}, "best_of", "best_of different from n"),
        ({"prompt": "a", "stream_options": 1}, "stream_options", "must be an object"),
        ({"prompt": "a", "stream_options": {}}, "stream_options", "only allowed with stream"),
        ({"prompt": "a", "rid": 5}, "rid", "rid must be a string"),
    ],
)
def test_bad_completion_requests(backend, body, param, needle):
    with pytest.raises(OpenAIRequestError) as info:
        parse_completion_request(body, backend)
    assert needle in str(info.value) and info.value.param == param


def test_echo_of_token_ids_needs_a_tokenizer(backend):
    call = parse_completion_request({"prompt": [1, 403], "echo": True}, backend)
    assert call.echo_texts == [backend.tokenizer.decode([1, 403], skip_special_tokens=False)]
    no_tok = SimpleNamespace(**{**vars(backend), "tokenizer": None})
    with pytest.raises(OpenAIRequestError, match="needs a tokenizer"):
        parse_completion_request({"prompt": [1, 403], "echo": True}, no_tok)


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def test_chat_request_mapping(backend):
    body = {
        "messages": HI,
        "max_tokens": 5,
        "max_completion_tokens": 7,
        "stop": ["x"],
        "logprobs": True,
        "top_logprobs": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [TOOL],
        "tool_choice": "none",  # the template sees the tools; the model is not offered a call
    }
    call = parse_chat_request(body, backend)
    assert call.id.startswith("chatcmpl-") and call.include_usage and call.logprobs == 3
    sp = call.native["sampling_params"]
    assert sp == {"max_new_tokens": 7, "n": 1, "stop": ["x", "\nUser:", "\nSystem:"]}
    assert call.native["input_ids"] == render_chat(
        TEMPLATES["plain"], backend.tokenizer, HI, tools=[TOOL]
    )
    assert (
        call.tools is None
        and call.native["top_logprobs_num"] == 3
        and call.native["return_logprob"] is True
    )
    # chat without max tokens runs to the end of the context
    plain = parse_chat_request({"messages": HI}, backend).native["sampling_params"]
    assert plain["max_new_tokens"] == 512 and "return_logprob" not in plain


def test_chat_continue_final_message_and_stop_ids(backend):
    msgs = HI + [{"role": "assistant", "content": "Once"}]
    call = parse_chat_request({"messages": msgs, "continue_final_message": True}, backend)
    assert backend.tokenizer.decode(call.native["input_ids"]).endswith("Assistant: Once")
    template = ChatTemplate("t", "{{ messages[0].content }}", ("</s>",))
    eos_stop = SimpleNamespace(**{**vars(backend), "chat_template": template})
    sp = parse_chat_request({"messages": HI, "stop_token_ids": [9]}, eos_stop).native[
        "sampling_params"
    ]
    assert "stop" not in sp and sp["stop_token_ids"] == [9, 2]


@pytest.mark.parametrize(
    "fmt, schema",
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, '{"type": "object"}'),
        (
            {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "integer"}}},
            '{"type": "integer"}',
        ),
    ],
)
def test_response_format(backend, fmt, schema):
    sp = parse_chat_request({"messages": HI, "response_format": fmt}, backend).native
    assert sp["sampling_params"].get("json_schema") == schema


@pytest.mark.parametrize(
    "extra, param, needle",
    [
        ({"messages": None}, "messages", "messages must be a non-empty list"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages", "tool_call_id"),
        ({"tools": [{"type": "function"}]}, "tools", "function must be an object with a name"),
        ({"functions": [{"name": "f"}], "tool_choice": "auto"}, "functions", "either tools"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}]},
            "tools",
            "no tool-call parser for its chat template",
        ),
        ({"top_logprobs": 2}, "top_logprobs", "top_logprobs needs logprobs: true"),
        ({"logprobs": True, "top_logprobs": 30}, "top_logprobs", "[0, 20]"),
        ({"max_completion_tokens": -2}, "max_completion_tokens", ">= 0"),
        ({"response_format": {"type": "xml"}}, "response_format", "text | json_object"),
        ({"response_format": "json"}, "response_format", "response_format must be"),
        ({"response_format": {"type": "json_schema"}}, "response_format", "schema must be"),
        (
            {"response_format": {"type": "json_object"}, "regex": "a"},
            "response_format",
            "either response_format or",
        ),
        ({"chat_template_kwargs": [1]}, "chat_template_kwargs", "must be an object"),
        ({"chat_template_kwargs": {"messages": 1}}, "messages", "must not set 'messages'"),
        ({"continue_final_message": True}, "messages", "last message to be assistant"),
    ],
)
def test_bad_chat_requests(backend, extra, param, needle):
    with pytest.raises(OpenAIRequestError) as info:
        parse_chat_request({"messages": HI, **extra}, backend)
    assert needle in str(info.value) and info.value.param == param


def test_json_body_and_error_shapes():
    assert parse_json_body(b'{"a": 1}') == {"a": 1}
    for raw, needle in [(b"{", "not valid JSON"), (b"\xff", "not valid UTF-8"), (b"[]", "object")]:
        with pytest.raises(OpenAIRequestError, match=needle):
            parse_json_body(raw)
    assert error_body(OpenAIRequestError("bad n", "n")) == (
        400,
        {"error": {"message": "bad n", "type": "invalid_request_error", "param": "n", "code": 400}},
    )
    assert error_body(RequestError("x"))[1]["error"]["param"] is None
    status, body = error_body(CapacityError("queue full"))
    assert status == 503 and body["error"]["type"] == "server_error"
    status, body = error_body(ValueError("boom"))
    assert status == 500 and "boom" not in body["error"]["message"]  # internals stay in the log
    assert body["error"]["message"] == "internal server error; the server log has the details"


# ---- responses ---------------------------------------------------------------------------
def result(text, out_ids, finish, prompt=3, cached=0, **meta) -> dict:
    info = {
        "id": "x",
        "finish_reason": finish,
        "prompt_tokens": prompt,
        "completion_tokens": len(out_ids),
        "cached_tokens": cached,
        **meta,
    }
    return {"text": text, "output_ids": out_ids, "meta_info": info}


STOP_EOS = {"type": "stop", "matched": 2}
LENGTH = {"type": "length", "length": 2}


def test_completion_response_usage_and_finish_reasons(backend):
    call = parse_completion_request({"prompt": ["a", "b"], "n": 2}, backend)
    items = [
        result("A1", [5], STOP_EOS, prompt=4, cached=0),
        result("A2", [5, 6], LENGTH, prompt=4, cached=3),
        result("B1", [7], {"type": "stop", "matched": "\n"}, prompt=6, cached=5),
        result("B2", [7], STOP_EOS, prompt=6, cached=5),
    ]
    out = build_response(call, items)
    assert out["object"] == "text_completion" and out["model"] == "served"
    assert [
        (c["index"], c["text"], c["finish_reason"], c["matched_stop"]) for c in out["choices"]
    ] == [
        (0, "A1", "stop", 2),
        (1, "A2", "length", None),
        (2, "B1", "stop", "\n"),
        (3, "B2", "stop", 2),
    ]
    # each prompt once; cached = the smallest hit among a prompt's samples
    assert out["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 5},
    }
    aborted = result("", [], {"type": "abort", "message": "shutting down"})
    with pytest.raises(RequestAbortedError, match="aborted: shutting down"):
        build_response(call, items[:3] + [aborted])
    assert RequestAbortedError.http_status == 503


def test_completion_echo_logprobs(backend):
    call = parse_completion_request({"prompt": "Hi", "echo": True, "logprobs": 1}, backend)
    r = result(
        " there",
        [9],
        LENGTH,
        input_token_logprobs=[[None, 1, "<s>"], [-1.5, 4, "Hi"]],
        output_token_logprobs=[[-float("inf"), 9, " there"]],
        input_top_logprobs=[None, [[-0.5, 8, "Yo"]]],
        output_top_logprobs=[[[-0.1, 7, " here"]]],
    )
    choice = build_response(call, r)["choices"][0]
    assert choice["text"] == "Hi there"
    assert choice["logprobs"] == {
        "tokens": ["<s>", "Hi", " there"],
        "token_logprobs": [None, -1.5, -9999.0],
        "top_logprobs": [None, {"Yo": -0.5}, {" here": -0.1}],
        "text_offset": [0, 3, 5],
    }
    json.dumps(choice, allow_nan=False)  # strictly valid JSON


def test_chat_response_logprobs(backend):
    call = parse_chat_request({"messages": HI, "logprobs": True, "top_logprobs": 1}, backend)
    r = result(
        "é!",
        [9, 10],
        STOP_EOS,
        output_token_logprobs=[[-0.2, 9, "é"], [-0.3, 10, "!"]],
        output_top_logprobs=[[[-0.2, 9, "é"]], [[-0.3, 10, "!"]]],
    )
    out = build_response(call, r)
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    choice = out["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "é!"}
    first = {"token": "é", "logprob": -0.2, "bytes": [195, 169]}
    assert choice["logprobs"]["content"][0] == {**first, "top_logprobs": [first]}
    assert choice["finish_reason"] == "stop" and choice["matched_stop"] == 2
    # without logprobs in the request: null
    plain = parse_chat_request({"messages": HI}, backend)
    assert build_response(plain, result("x", [9], LENGTH))["choices"][0]["logprobs"] is None


# ---- streaming ---------------------------------------------------------------------------
def test_completion_stream_deltas(backend):
    call = parse_completion_request(
        {
            "prompt": "Hi",
            "n": 2,
            "stream": True,
            "echo": True,
            "stream_options": {"include_usage": True},
        },
        backend,
    )
    st = StreamState(call)
    assert st.start() == []
    feed = [
        ({"index": 0, **result("Onc", [5], None)}, "HiOnc"),
        ({"index": 1, **result("", [6], None)}, "Hi"),  # nothing new but the echo
        ({"index": 0, **result("Onc", [5, 7], None)}, None),  # no new text: no chunk
        ({"index": 0, **result("Once up", [5, 7, 8], LENGTH)}, "e up"),
        ({"index": 1, **result("Twice", [6, 9], STOP_EOS, cached=2)}, "Twice"),
    ]
    for chunk, expected in feed:
        out = st.feed(chunk)
        if expected is None:
            assert out == []
            continue
        (c,) = out
        assert c["object"] == "text_completion" and c["usage"] is None
        assert c["choices"][0]["index"] == chunk["index"] and c["choices"][0]["text"] == expected
    assert c["choices"][0]["finish_reason"] == "stop" and st.all_done
    assert st.feed({"index": 1, **result("Twice", [6, 9], STOP_EOS)}) == []  # after the end
    u = st.usage_chunk()
    assert u["choices"] == [] and u["usage"]["completion_tokens"] == 5
    assert u["usage"]["prompt_tokens"] == 3 and u["usage"]["prompt_tokens_details"] == {
        "cached_tokens": 0
    }


def test_chat_stream_role_content_finish_and_logprobs(backend):
    call = parse_chat_request({"messages": HI, "stream": True, "logprobs": True}, backend)
    st = StreamState(call)
    (start,) = st.start()
    assert start["object"] == "chat.completion.chunk" and "usage" not in start
    assert start["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    lp1 = [[-0.5, 5, "Hel"]]
    lp2 = lp1 + [[-0.25, 6, "lo"]]
    (c1,) = st.feed(result("Hel", [5], None, output_token_logprobs=lp1))
    assert c1["choices"][0]["delta"] == {"content": "Hel"}
    assert [e["token"] for e in c1["choices"][0]["logprobs"]["content"]] == ["Hel"]
    (c2,) = st.feed(result("Hello", [5, 6], LENGTH, output_token_logprobs=lp2))
    assert c2["choices"][0]["delta"] == {"content": "lo"}
    assert c2["choices"][0]["finish_reason"] == "length"
    assert [e["token"] for e in c2["choices"][0]["logprobs"]["content"]] == ["lo"]
    assert math.isclose(c2["choices"][0]["logprobs"]["content"][0]["logprob"], -0.25)


def test_stream_final_chunk_without_new_text_and_abort(backend):
    call = parse_chat_request({"messages": HI, "stream": True, "n": 2}, backend)
    st = StreamState(call)
    assert len(st.start()) == 2
    st.feed({"index": 0, **result("ab", [5], None)})
    (end,) = st.feed({"index": 0, **result("ab", [5, 2], STOP_EOS)})
    assert end["choices"][0]["delta"] == {} and end["choices"][0]["finish_reason"] == "stop"
    assert not st.all_done
    with pytest.raises(RequestAbortedError, match="admin"):
        st.feed({"index": 1, **result("", [], {"type": "abort", "message": "admin"})})


@pytest.mark.parametrize(
    "message,param",
    [
        ("temperature must be in [0.0, inf], got -1", "temperature"),
        ("max_new_tokens must be >= 0, got -1", "max_tokens"),
        ("input_ids: token id 99999 is outside the vocabulary", "prompt"),
        ("n=65 asks for more samples than this server allows", "n"),
        ("the prompt has 600 tokens but this server accepts at most 511", None),
    ],
)
def test_engine_errors_name_the_openai_param(message, param):
    """An engine-side 400 (its message starts with the native field) names the OpenAI field."""
    from radixlm.errors import RequestError

    status, body = error_body(RequestError(message))
    assert status == 400 and body["error"]["param"] == param
