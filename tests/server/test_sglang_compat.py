"""SGLang's tools run unchanged: the native ``/generate`` takes SGLang's whole request schema
(``GenerateReqInput`` and ``SamplingParams`` of the pinned release), and so do the OpenAI routes
for SGLang's extension fields.

``tests/fixtures/sglang_schema.json`` lists every field of the pinned release with its default
and its kind here (``make_sglang_schema.py`` regenerates it from an installed SGLang): honoured;
accepted at its default (else a 400 naming the field and saying it is not supported); or always
refused, with the reason. The table test sends each field at its default and at a value off the
default; the replay tests send the exact bodies that ``sglang.bench_serving`` (backends
``sglang``, ``sglang-oai``, ``sglang-oai-chat``) and sglang-router build, streaming and not, and
read the answers the way those clients read them.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from radixlm.sampling_params import SamplingParams
from radixlm.server.native_request import (
    DEFAULT_ONLY,
    GENERATE_FIELDS,
    REFUSED_FIELDS,
    SGLANG_VERSION,
)
from radixlm.server.openai_fields import (
    CHAT_FIELDS,
    COMPLETION_FIELDS,
    SGLANG_CHAT_DEFAULT_ONLY,
    SGLANG_COMPLETION_DEFAULT_ONLY,
)

SCHEMA = json.loads((Path(__file__).parents[1] / "fixtures" / "sglang_schema.json").read_text())
PROMPT = "Once upon a time"
BASE = {"text": PROMPT, "sampling_params": {"max_new_tokens": 2, "temperature": 0}}
# names accepted on /generate beyond SGLang's schema, and why
EXTRA_GENERATE = {"model": "sglang-router forwards the OpenAI-style model name"}


def _kinds(section: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {"honoured": set(), "default": set(), "refused": set()}
    for name, entry in SCHEMA[section].items():
        out[entry["kind"]].add(name)
    return out


# ---- the table agrees with the parsers ---------------------------------------------------
def test_pinned_version():
    assert SCHEMA["sglang_version"] == SGLANG_VERSION == "0.5.23"


def test_generate_table_is_the_parsers():
    k = _kinds("generate")
    assert k["honoured"] == GENERATE_FIELDS - EXTRA_GENERATE.keys()
    assert k["default"] == DEFAULT_ONLY.keys()
    assert k["refused"] == REFUSED_FIELDS.keys()
    for name in k["default"]:
        assert SCHEMA["generate"][name]["default"] == DEFAULT_ONLY[name], name


def test_sampling_table_is_the_parsers():
    k = _kinds("sampling_params")
    honoured = set(SamplingParams.valid_keys()) - k["default"]
    assert k["honoured"] == honoured
    assert k["default"] | k["honoured"] == set(SamplingParams.valid_keys())
    assert k["refused"] == SamplingParams.refused_keys().keys()
    assert all(SCHEMA["sampling_params"][n]["default"] is None for n in k["default"])


@pytest.mark.parametrize(
    "section, fields, default_only",
    [
        ("completions", COMPLETION_FIELDS, SGLANG_COMPLETION_DEFAULT_ONLY),
        ("chat", CHAT_FIELDS, SGLANG_CHAT_DEFAULT_ONLY),
    ],
)
def test_openai_extension_table_is_the_parsers(section, fields, default_only):
    k = _kinds(section)
    assert k["honoured"] <= fields
    assert k["default"] == default_only.keys()
    assert not k["refused"]
    for name in k["default"]:
        assert SCHEMA[section][name]["default"] == default_only[name], name


# ---- every field, against the server -----------------------------------------------------
def off_default(default: Any) -> Any:
    """A value that is not the default (nor an empty stand-in for it)."""
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 7
    return "x"


# A non-default value for each honoured field, and what it must do (checked in the answer).
HONOURED_GENERATE = {
    "text": ("Hello there", None),
    "input_ids": ([1, 2, 3], None),
    "sampling_params": ({"max_new_tokens": 3, "temperature": 0}, "completion_tokens=3"),
    "rid": ("compat-rid", "id"),
    "return_logprob": (True, "logprobs"),
    "logprob_start_len": (0, None),
    "top_logprobs_num": (2, None),
    "return_text_in_logprobs": (True, None),
    "stream": (True, "stream"),
    "cache_salt": ("salt", None),
    "extra_key": ("key", None),
    "require_reasoning": (True, "400"),  # honoured: needs --reasoning-parser, else a 400
}


def _gen_body(field: str, value: Any) -> dict:
    body = dict(BASE)
    if field == "input_ids":
        body.pop("text")
    if field == "text":
        body["text"] = value
        return body
    body[field] = value
    return body


GEN_FIELDS = sorted(SCHEMA["generate"])


# The prompt fields' default (null) is no request at all: they are tested off-default only.
@pytest.mark.parametrize("field", [f for f in GEN_FIELDS if f not in ("text", "input_ids")])
def test_generate_field_at_default(server, field):
    entry = SCHEMA["generate"][field]
    status, out = server.post("/generate", _gen_body(field, entry["default"]))
    if entry["kind"] == "refused":
        assert status == 400, out
        assert field in out["error"]["message"] and "not accepted" in out["error"]["message"]
        return
    assert status == 200, (field, out)
    if field != "sampling_params":  # (its default, null, is 128 new tokens)
        assert out["meta_info"]["completion_tokens"] == 2


@pytest.mark.parametrize("field", GEN_FIELDS)
def test_generate_field_off_default(server, field):
    entry = SCHEMA["generate"][field]
    kind = entry["kind"]
    if kind == "honoured":
        value, check = HONOURED_GENERATE[field]
        body = _gen_body(field, value)
        if check == "stream":
            events = server.stream(body)
            assert events[-1] == "[DONE]" and events[-2]["meta_info"]["completion_tokens"] == 2
            return
        status, out = server.post("/generate", body)
        if check == "400":
            assert status == 400 and "reasoning-parser" in out["error"]["message"]
            return
        assert status == 200, (field, out)
        meta = out["meta_info"]
        if check == "completion_tokens=3":
            assert meta["completion_tokens"] == 3
        elif check == "id":
            assert meta["id"] == "compat-rid"
        elif check == "logprobs":
            assert len(meta["output_token_logprobs"]) == 2
        return
    status, out = server.post("/generate", _gen_body(field, off_default(entry["default"])))
    assert status == 400, (field, out)
    message = out["error"]["message"]
    assert repr(field) in message
    assert ("not supported" if kind == "default" else "not accepted") in message


@pytest.mark.parametrize("field", sorted(SCHEMA["sampling_params"]))
def test_sampling_field(server, field):
    entry = SCHEMA["sampling_params"][field]
    sp = {"max_new_tokens": 2, "temperature": 0}
    at = {**sp, field: entry["default"]} if field != "max_new_tokens" else sp
    status, out = server.post("/generate", {"text": PROMPT, "sampling_params": at})
    if entry["kind"] == "refused":
        assert status == 400 and "not accepted" in out["error"]["message"], out
        return
    assert status == 200, (field, out)
    if entry["kind"] == "default":
        off = {**sp, field: "x"}
        status, out = server.post("/generate", {"text": PROMPT, "sampling_params": off})
        assert status == 400 and repr(field) in out["error"]["message"], out
        assert "not supported" in out["error"]["message"]


HONOURED_SAMPLING = {  # non-default values that change nothing about a 2-token request's success
    "max_new_tokens": 3, "stop": "zzz", "stop_token_ids": [7], "temperature": 0.5, "top_p": 0.9,
    "top_k": 5, "min_p": 0.1, "frequency_penalty": 0.5, "presence_penalty": 0.5,
    "repetition_penalty": 1.2, "min_new_tokens": 1, "n": 2, "json_schema": {"type": "object"},
    "regex": "[a-z ]+", "ebnf": 'root ::= "a"+', "ignore_eos": True, "skip_special_tokens": False,
    "spaces_between_special_tokens": False, "no_stop_trim": True, "stream_interval": 2,
    "logit_bias": {"5": 1.0}, "sampling_seed": 3,
}  # fmt: skip


@pytest.mark.parametrize("field", sorted(HONOURED_SAMPLING))
def test_sampling_field_honoured_off_default(server, field):
    assert SCHEMA["sampling_params"][field]["kind"] == "honoured"
    sp = {"max_new_tokens": 2, "temperature": 0, field: HONOURED_SAMPLING[field]}
    if field == "max_new_tokens":
        sp["max_new_tokens"] = 3
    status, out = server.post("/generate", {"text": PROMPT, "sampling_params": sp})
    assert status == 200, (field, out)
    if field == "n":
        assert isinstance(out, list) and len(out) == 2
    elif field == "max_new_tokens":
        assert out["meta_info"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    "route, section",
    [("/v1/completions", "completions"), ("/v1/chat/completions", "chat")],
)
def test_openai_extensions(server, route, section):
    base = (
        {"prompt": PROMPT, "max_tokens": 2}
        if section == "completions"
        else {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 2}
    )
    for field, entry in sorted(SCHEMA[section].items()):
        if entry["kind"] != "default":
            continue
        status, out = server.post(route, {**base, field: entry["default"]})
        assert status == 200, (field, out)
        status, out = server.post(route, {**base, field: off_default(entry["default"])})
        assert status == 400, (field, out)
        assert out["error"]["param"] == field and "not supported" in out["error"]["message"]


def test_batch_per_prompt_defaults(server):
    """SGLang's per-prompt lists of defaults (a batch through the router)."""
    body = {**BASE, "text": [PROMPT, PROMPT], "lora_path": [None, None]}
    body["return_hidden_states"] = [False, False]
    status, out = server.post("/generate", body)
    assert status == 200 and len(out) == 2, out


# ---- the exact bodies SGLang's clients send -------------------------------------------------
def bench_serving_sglang(stream: bool) -> dict:
    """``sglang.bench_serving --backend sglang`` (0.5.23, default flags): the body of
    ``async_request_sglang_generate``."""
    return {
        "text": PROMPT,
        "sampling_params": {"temperature": 0.0, "max_new_tokens": 4, "ignore_eos": True},
        "stream": stream,
        "lora_path": None,
        "return_logprob": False,
        "return_routed_experts": False,
        "logprob_start_len": -1,
    }


def bench_serving_oai(stream: bool, model: str) -> dict:
    """``--backend sglang-oai`` (``async_request_openai_completions``)."""
    return {
        "model": model,
        "prompt": PROMPT,
        "best_of": 1,
        "max_tokens": 4,
        "stream": stream,
        "temperature": 0.0,
        "ignore_eos": True,
    }


def bench_serving_oai_chat(stream: bool, model: str) -> dict:
    """``--backend sglang-oai-chat`` (``async_request_openai_chat_completions``)."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_completion_tokens": 4,
        "stream": stream,
        "temperature": 0.0,
        "ignore_eos": True,
    }


def router_generate(stream: bool, model: str) -> dict:
    """sglang-router's ``GenerateRequest`` serialised for a worker: its ``#[serde(default)]``
    fields always present, the ``Option`` ones only when set, plus the client's ``model``
    (passed through)."""
    return {
        "text": PROMPT,
        "sampling_params": {"max_new_tokens": 4, "temperature": 0.0},
        "return_text_in_logprobs": False,
        "stream": stream,
        "log_metrics": True,
        "return_hidden_states": False,
        "background": False,
        "no_logs": False,
        "return_bytes": False,
        "return_entropy": False,
        "model": model,
    }


def sse(server, path: str, body: dict) -> list[Any]:
    req = urllib.request.Request(
        server.url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    events: list[Any] = []
    with urllib.request.urlopen(req, timeout=120) as resp:
        for line in resp:
            line = line.strip()
            if line.startswith(b"data: "):
                data = line[6:]
                events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return events


def _served(server) -> str:
    return server.get("/v1/models")[1]["data"][0]["id"]


def _check_native_meta(meta: dict, completion_tokens: int) -> None:
    """The keys bench_serving, the frontend and the router read."""
    assert meta["completion_tokens"] == completion_tokens
    assert meta["prompt_tokens"] > 0
    assert isinstance(meta["cached_tokens"], int)
    assert isinstance(meta["e2e_latency"], float)
    assert isinstance(meta["id"], str) and meta["id"]
    assert meta["finish_reason"]["type"] == "length" and meta["finish_reason"]["length"] == 4


@pytest.mark.parametrize("make", [bench_serving_sglang, router_generate])
def test_native_bodies_non_streaming(server, make):
    body = make(False) if make is bench_serving_sglang else make(False, _served(server))
    status, out = server.post("/generate", body)
    assert status == 200, out
    assert isinstance(out["text"], str) and len(out["output_ids"]) == 4
    _check_native_meta(out["meta_info"], 4)


@pytest.mark.parametrize("make", [bench_serving_sglang, router_generate])
def test_native_bodies_streaming(server, make):
    """Read as bench_serving reads it: each event's ``text`` is cumulative and its
    ``meta_info.completion_tokens`` counts the tokens so far; ``[DONE]`` ends the stream."""
    body = make(True) if make is bench_serving_sglang else make(True, _served(server))
    events = sse(server, "/generate", body)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    counts = [c["meta_info"]["completion_tokens"] for c in chunks]
    assert counts == sorted(counts) and counts[-1] == 4
    texts = [c["text"] for c in chunks]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # cumulative
    for c in chunks:
        assert c["meta_info"]["prompt_tokens"] > 0  # _record_server_prompt_len
    _check_native_meta(chunks[-1]["meta_info"], 4)
    status, whole = server.post("/generate", {**body, "stream": False})
    assert whole["text"] == texts[-1]


def test_router_model_must_be_a_string(server):
    status, out = server.post("/generate", router_generate(False, 7))
    assert status == 400 and "model must be a string" in out["error"]["message"], out


@pytest.mark.parametrize("stream", [False, True])
def test_bench_serving_oai(server, stream):
    body = bench_serving_oai(stream, _served(server))
    if not stream:
        status, out = server.post("/v1/completions", body)
        assert status == 200, out
        assert out["usage"]["completion_tokens"] == 4 and out["usage"]["prompt_tokens"] > 0
        return
    events = sse(server, "/v1/completions", body)
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"])
    assert text


@pytest.mark.parametrize("stream", [False, True])
def test_bench_serving_oai_chat(server, stream):
    body = bench_serving_oai_chat(stream, _served(server))
    if not stream:
        status, out = server.post("/v1/chat/completions", body)
        assert status == 200, out
        assert out["usage"]["completion_tokens"] == 4
        assert isinstance(out["choices"][0]["message"]["content"], str)
        return
    events = sse(server, "/v1/chat/completions", body)
    assert events[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"] for e in events[:-1] if e["choices"]]
    assert "".join(d.get("content") or "" for d in deltas)


def test_router_model_must_be_served(server):
    status, out = server.post("/generate", router_generate(False, "no-such-model"))
    assert status == 404 and "'no-such-model' does not exist" in out["error"]["message"], out
    for name in (_served(server), "default"):
        status, out = server.post("/generate", router_generate(False, name))
        assert status == 200, out
