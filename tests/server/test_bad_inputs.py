"""Bad inputs, one table: malformed or invalid requests on ``/generate``, ``/v1/completions`` and
``/v1/chat/completions``, each answered with a 4xx and a JSON error whose message names the
problem (so the client knows what to fix), never a 5xx, a 200 or internal exception text.

Every row is ``(id, route, body, headers, status, needle)``: ``body`` is raw bytes or a JSON
value (sent as ``json.dumps``), ``needle`` a substring the error message must contain. All rows
share the session server (the bundled model, context length 512, vocabulary of 512 tokens);
the last test checks that it still serves a good request on each route.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

GEN, CMPL, CHAT = "/generate", "/v1/completions", "/v1/chat/completions"
DROP = object()  # a field value meaning "leave this field out"
MODEL = "stories260K"  # the bundled model's served name
PROMPT = "Once upon a time"
LONG_TEXT = "Once upon a time there was a little girl. " * 80  # ~800 tokens > 512 context
LONG_IDS = [1] + [300] * 600


def _nested_schema(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


DEEP_SCHEMA = _nested_schema(100)  # the grammar backends take 64 levels
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip


def _merge(base: dict, fields: dict) -> dict:
    out = dict(base)
    for k, v in fields.items():
        if v is DROP:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def gen(**fields: Any) -> dict:
    """A good /generate body with ``fields`` replaced (``DROP`` removes one)."""
    return _merge({"text": PROMPT, "sampling_params": {"max_new_tokens": 2}}, fields)


def gsp(**sp: Any) -> dict:
    """A good /generate body with these sampling_params."""
    return gen(sampling_params=_merge({"max_new_tokens": 2}, sp))


def cmpl(**fields: Any) -> dict:
    return _merge({"model": MODEL, "prompt": PROMPT, "max_tokens": 2}, fields)


def chat(**fields: Any) -> dict:
    base = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 2}
    return _merge(base, fields)


def msgs(*messages: Any) -> dict:
    return chat(messages=list(messages))


def rf(response_format: Any) -> dict:
    return chat(response_format=response_format)


def fn_tool(**function: Any) -> dict:
    return {"type": "function", "function": function}


ROUTE_BODIES = {GEN: gen(), CMPL: cmpl(), CHAT: chat()}
SHORT = {GEN: "gen", CMPL: "cmpl", CHAT: "chat"}

# Bodies that are not a JSON object, on every route: (id, raw body, needle).
NOT_OBJECTS = [
    ("empty-body", b"", "not valid JSON"),
    ("plain-text", b"hello there", "not valid JSON"),
    ("single-quotes", b"{'text': 'hi'}", "not valid JSON"),
    ("trailing-comma", b'{"text": "hi",}', "not valid JSON"),
    ("truncated", b'{"text": "hi"', "not valid JSON"),
    ("two-objects", b'{"text": "hi"}{"text": "hi"}', "not valid JSON"),
    ("array", b"[1, 2, 3]", "must be a JSON object"),
    ("number", b"42", "must be a JSON object"),
    ("string", b'"Once upon a time"', "must be a JSON object"),
    ("null", b"null", "must be a JSON object"),
    ("true", b"true", "must be a JSON object"),
]

# (id, route, body, headers, status, needle)
CASES: list[tuple[str, str, Any, dict | None, int, str]] = [
    (f"{SHORT[route]}-{name}", route, raw, None, 400, needle)
    for route in (GEN, CMPL, CHAT)
    for name, raw, needle in NOT_OBJECTS
    if (route, name) != (GEN, "empty-body")
]
# /generate reads an empty body as {}: the answer names the missing prompt
CASES.append(("gen-empty-body", GEN, b"", None, 400, "exactly one of text/prompt and input_ids"))
# JSON must be UTF-8 (RFC 8259) whatever charset the header claims; a form post is not JSON
LATIN1 = {"Content-Type": "application/json; charset=latin-1"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
CASES += [
    (f"{SHORT[route]}-latin1-body", route, json.dumps(body, ensure_ascii=False).encode("latin-1"), LATIN1, 400, "not valid UTF-8")
    for route, body in ((GEN, gen(text="café")), (CMPL, cmpl(prompt="café")), (CHAT, msgs({"role": "user", "content": "café"})))
] + [
    (f"{SHORT[route]}-form-body", route, b"text=hello&max_tokens=2", FORM, 400, "not valid JSON")
    for route in (GEN, CMPL, CHAT)
]  # fmt: skip

CASES += [
    # ---- /generate: the prompt ---------------------------------------------------------------
    ("gen-empty-object", GEN, {}, None, 400, "exactly one of text/prompt and input_ids"),
    ("gen-no-prompt", GEN, gen(text=DROP), None, 400, "exactly one of text/prompt and input_ids"),
    ("gen-text-null", GEN, gen(text=None), None, 400, "exactly one of text/prompt and input_ids"),
    ("gen-text-and-input-ids", GEN, gen(input_ids=[1, 2]), None, 400, "exactly one of text/prompt and input_ids"),
    ("gen-text-number", GEN, gen(text=5), None, 400, "text/prompt must be a non-empty string"),
    ("gen-text-bool", GEN, gen(text=True), None, 400, "text/prompt must be a non-empty string"),
    ("gen-text-object", GEN, gen(text={"a": 1}), None, 400, "text/prompt must be a non-empty string"),
    ("gen-text-empty-list", GEN, gen(text=[]), None, 400, "text/prompt must be a non-empty string"),
    ("gen-text-batch-mixed", GEN, gen(text=["a", 5]), None, 400, "text/prompt must be a non-empty string"),
    ("gen-text-nested-list", GEN, gen(text=[["a"]]), None, 400, "text/prompt must be a non-empty string"),
    ("gen-text-empty", GEN, gen(text=""), None, 400, "the prompt is empty"),
    ("gen-text-batch-empty-item", GEN, gen(text=["ok", ""]), None, 400, "the prompt is empty"),
    ("gen-text-too-long", GEN, gen(text=LONG_TEXT), None, 400, "context length"),
    ("gen-ids-empty", GEN, gen(text=DROP, input_ids=[]), None, 400, "the prompt is empty"),
    ("gen-ids-negative", GEN, gen(text=DROP, input_ids=[1, -5]), None, 400, "outside the vocabulary"),
    ("gen-ids-beyond-vocab", GEN, gen(text=DROP, input_ids=[1, 99999]), None, 400, "outside the vocabulary"),
    ("gen-ids-string-inside", GEN, gen(text=DROP, input_ids=[1, "2"]), None, 400, "input_ids must be a list of token ids"),
    ("gen-ids-float-inside", GEN, gen(text=DROP, input_ids=[1, 2.5]), None, 400, "input_ids must be a list of token ids"),
    ("gen-ids-bool-inside", GEN, gen(text=DROP, input_ids=[1, True]), None, 400, "input_ids must be a list of token ids"),
    ("gen-ids-string", GEN, gen(text=DROP, input_ids="1 2 3"), None, 400, "input_ids must be a list of token ids"),
    ("gen-ids-number", GEN, gen(text=DROP, input_ids=7), None, 400, "input_ids must be a list of token ids"),
    ("gen-ids-mixed-nesting", GEN, gen(text=DROP, input_ids=[[1, 2], 3]), None, 400, "input_ids must be a list of token ids"),
    ("gen-ids-too-deep", GEN, gen(text=DROP, input_ids=[[[1, 2]]]), None, 400, "input_ids must be a list of token ids"),
    ("gen-ids-batch-empty-item", GEN, gen(text=DROP, input_ids=[[1, 2], []]), None, 400, "the prompt is empty"),
    ("gen-ids-batch-negative", GEN, gen(text=DROP, input_ids=[[1, 2], [3, -4]]), None, 400, "outside the vocabulary"),
    ("gen-ids-too-long", GEN, gen(text=DROP, input_ids=LONG_IDS), None, 400, "context length"),
    # ---- /generate: top-level fields ---------------------------------------------------------
    ("gen-unknown-field", GEN, gen(prompt=PROMPT), None, 400, "unknown field(s) ['prompt']"),
    ("gen-unknown-field-max-tokens", GEN, gen(max_tokens=5), None, 400, "unknown field(s) ['max_tokens']"),
    ("gen-unbuilt-field-image", GEN, gen(image_data="http://x/img.png"), None, 400, "'image_data' is not supported"),
    ("gen-unbuilt-field-lora", GEN, gen(lora_path="adapter"), None, 400, "'lora_path' is not supported"),
    ("gen-stream-string", GEN, gen(stream="yes"), None, 400, "stream must be true or false"),
    ("gen-stream-number", GEN, gen(stream=1), None, 400, "stream must be true or false"),
    ("gen-text-in-logprobs-number", GEN, gen(return_text_in_logprobs=1), None, 400, "return_text_in_logprobs must be true or false"),
    ("gen-require-reasoning-string", GEN, gen(require_reasoning="yes"), None, 400, "require_reasoning must be true or false"),
    ("gen-require-reasoning-no-parser", GEN, gen(require_reasoning=True), None, 400, "--reasoning-parser"),
    ("gen-return-logprob-string", GEN, gen(return_logprob="yes"), None, 400, "return_logprob must be bool"),
    ("gen-return-logprob-list-length", GEN, gen(text=["a", "b"], return_logprob=[True]), None, 400, "return_logprob has 1 entries but there are 2 prompts"),
    ("gen-logprob-start-len-string", GEN, gen(logprob_start_len="1"), None, 400, "logprob_start_len must be int"),
    ("gen-logprob-start-len-below-minus-1", GEN, gen(return_logprob=True, logprob_start_len=-2), None, 400, "logprob_start_len must be >= -1"),
    ("gen-top-logprobs-num-negative", GEN, gen(return_logprob=True, top_logprobs_num=-1), None, 400, "top_logprobs_num must be >= 0"),
    ("gen-top-logprobs-num-float", GEN, gen(return_logprob=True, top_logprobs_num=2.5), None, 400, "top_logprobs_num must be int"),
    ("gen-rid-number", GEN, gen(rid=5), None, 400, "rid must be a string"),
    ("gen-rid-list-for-one-prompt", GEN, gen(rid=["a", "b"]), None, 400, "rid must be a string or a list of 1 strings"),
    ("gen-rid-batch-with-number", GEN, gen(text=["a", "b"], rid=["a", 2]), None, 400, "rid must be a string or a list of 2 strings"),
    ("gen-rid-batch-duplicate", GEN, gen(text=["a", "b"], rid=["x", "x"]), None, 400, "request ids must be unique"),
    ("gen-cache-salt-number", GEN, gen(cache_salt=5), None, 400, "cache_salt must be str"),
    ("gen-extra-key-list-of-numbers", GEN, gen(extra_key=[1]), None, 400, "extra_key must be str"),
    # ---- /generate: sampling_params ----------------------------------------------------------
    ("gen-sp-string", GEN, gen(sampling_params="greedy"), None, 400, "sampling_params must be dict"),
    ("gen-sp-number", GEN, gen(sampling_params=5), None, 400, "sampling_params must be dict"),
    ("gen-sp-list-length", GEN, gen(sampling_params=[{}, {}]), None, 400, "sampling_params has 2 entries but there are 1 prompts"),
    ("gen-sp-list-of-non-objects", GEN, gen(text=["a", "b"], sampling_params=[{}, 5]), None, 400, "sampling_params must be dict"),
    ("gen-sp-unknown-key", GEN, gsp(max_tokens=5), None, 400, "unknown sampling parameter(s) ['max_tokens']"),
    ("gen-sp-unbuilt-key", GEN, gsp(structural_tag="x"), None, 400, "'structural_tag' is not supported"),
    ("gen-max-new-tokens-string", GEN, gsp(max_new_tokens="10"), None, 400, "max_new_tokens must be an integer"),
    ("gen-max-new-tokens-fraction", GEN, gsp(max_new_tokens=2.5), None, 400, "max_new_tokens must be an integer"),
    ("gen-max-new-tokens-negative", GEN, gsp(max_new_tokens=-1), None, 400, "max_new_tokens must be >= 0"),
    ("gen-max-new-tokens-bool", GEN, gsp(max_new_tokens=True), None, 400, "max_new_tokens must be an integer"),
    ("gen-min-new-tokens-negative", GEN, gsp(min_new_tokens=-1), None, 400, "min_new_tokens must be >= 0"),
    ("gen-min-above-max-new-tokens", GEN, gsp(min_new_tokens=5), None, 400, "min_new_tokens (5) must be <= max_new_tokens (2)"),
    ("gen-temperature-negative", GEN, gsp(temperature=-0.5), None, 400, "temperature must be in [0.0, inf]"),
    ("gen-temperature-string", GEN, gsp(temperature="hot"), None, 400, "temperature must be a finite number"),
    ("gen-temperature-bool", GEN, gsp(temperature=True), None, 400, "temperature must be a finite number"),
    ("gen-temperature-nan", GEN, b'{"text": "hi", "sampling_params": {"temperature": NaN}}', None, 400, "temperature must be a finite number"),
    ("gen-temperature-infinity", GEN, b'{"text": "hi", "sampling_params": {"temperature": Infinity}}', None, 400, "temperature must be a finite number"),
    ("gen-top-p-above-1", GEN, gsp(top_p=1.5), None, 400, "top_p must be in (0.0, 1.0]"),
    ("gen-top-p-zero", GEN, gsp(top_p=0), None, 400, "top_p must be in (0.0, 1.0]"),
    ("gen-top-p-string", GEN, gsp(top_p="0.9"), None, 400, "top_p must be a finite number"),
    ("gen-top-k-zero", GEN, gsp(top_k=0), None, 400, "top_k must be -1 (whole vocabulary) or >= 1"),
    ("gen-top-k-below-minus-1", GEN, gsp(top_k=-5), None, 400, "top_k must be -1 (whole vocabulary) or >= 1"),
    ("gen-top-k-fraction", GEN, gsp(top_k=2.5), None, 400, "top_k must be an integer"),
    ("gen-top-k-string", GEN, gsp(top_k="5"), None, 400, "top_k must be an integer"),
    ("gen-min-p-above-1", GEN, gsp(min_p=1.5), None, 400, "min_p must be in [0.0, 1.0]"),
    ("gen-frequency-penalty-above-2", GEN, gsp(frequency_penalty=3), None, 400, "frequency_penalty must be in [-2.0, 2.0]"),
    ("gen-presence-penalty-below-minus-2", GEN, gsp(presence_penalty=-3), None, 400, "presence_penalty must be in [-2.0, 2.0]"),
    ("gen-repetition-penalty-zero", GEN, gsp(repetition_penalty=0), None, 400, "repetition_penalty must be in (0.0, 2.0]"),
    ("gen-repetition-penalty-above-2", GEN, gsp(repetition_penalty=2.5), None, 400, "repetition_penalty must be in (0.0, 2.0]"),
    ("gen-n-zero", GEN, gsp(n=0), None, 400, "n must be >= 1"),
    ("gen-n-negative", GEN, gsp(n=-2), None, 400, "n must be >= 1"),
    ("gen-n-fraction", GEN, gsp(n=1.5), None, 400, "n must be an integer"),
    ("gen-n-string", GEN, gsp(n="2"), None, 400, "n must be an integer"),
    ("gen-n-too-large", GEN, gsp(n=1000), None, 400, "--max-n"),
    ("gen-stop-number", GEN, gsp(stop=5), None, 400, "stop must be a string or a list of strings"),
    ("gen-stop-nested-list", GEN, gsp(stop=[["a"]]), None, 400, "stop must be a string or a list of strings"),
    ("gen-stop-list-with-number", GEN, gsp(stop=["a", 1]), None, 400, "stop must be a string or a list of strings"),
    ("gen-stop-empty-string", GEN, gsp(stop=["a", ""]), None, 400, "stop strings must be non-empty"),
    ("gen-stop-token-ids-negative", GEN, gsp(stop_token_ids=[-1]), None, 400, "stop_token_ids holds token id -1 outside the vocabulary"),
    ("gen-stop-token-ids-beyond-vocab", GEN, gsp(stop_token_ids=[99999]), None, 400, "stop_token_ids holds token id 99999 outside the vocabulary"),
    ("gen-stop-token-ids-string", GEN, gsp(stop_token_ids="2"), None, 400, "stop_token_ids must be a list of integer token ids"),
    ("gen-stop-token-ids-nested", GEN, gsp(stop_token_ids=[[1]]), None, 400, "stop_token_ids must be a list of integer token ids"),
    ("gen-ignore-eos-string", GEN, gsp(ignore_eos="yes"), None, 400, "ignore_eos must be true or false"),
    ("gen-skip-special-tokens-number", GEN, gsp(skip_special_tokens=1), None, 400, "skip_special_tokens must be true or false"),
    ("gen-no-stop-trim-string", GEN, gsp(no_stop_trim="no"), None, 400, "no_stop_trim must be true or false"),
    ("gen-logit-bias-list", GEN, gsp(logit_bias=[1, 2]), None, 400, "logit_bias must be an object mapping token id -> bias"),
    ("gen-logit-bias-word-key", GEN, gsp(logit_bias={"abc": 1}), None, 400, "logit_bias key 'abc' is not an integer token id"),
    ("gen-logit-bias-negative-id", GEN, gsp(logit_bias={"-1": 1}), None, 400, "logit_bias token id -1 is outside the vocabulary"),
    ("gen-logit-bias-id-beyond-vocab", GEN, gsp(logit_bias={"99999": 1}), None, 400, "logit_bias token id 99999 is outside the vocabulary"),
    ("gen-logit-bias-string-value", GEN, gsp(logit_bias={"5": "high"}), None, 400, "logit_bias['5'] must be a finite number"),
    ("gen-logit-bias-nan-value", GEN, b'{"text": "hi", "sampling_params": {"logit_bias": {"5": NaN}}}', None, 400, "logit_bias['5'] must be a finite number"),
    ("gen-sampling-seed-string", GEN, gsp(sampling_seed="42"), None, 400, "sampling_seed must be an integer"),
    ("gen-sampling-seed-fraction", GEN, gsp(sampling_seed=1.5), None, 400, "sampling_seed must be an integer"),
    ("gen-stream-interval-zero", GEN, gsp(stream_interval=0), None, 400, "stream_interval must be >= 1"),
    ("gen-regex-does-not-compile", GEN, gsp(regex="(ab"), None, 400, "regex"),
    ("gen-regex-number", GEN, gsp(regex=5), None, 400, "regex must be a string"),
    ("gen-json-schema-not-json", GEN, gsp(json_schema="{not json"), None, 400, "json_schema"),
    ("gen-json-schema-number", GEN, gsp(json_schema=5), None, 400, "json_schema must be a string"),
    ("gen-json-schema-bad-type", GEN, gsp(json_schema={"type": "nonsense"}), None, 400, "json_schema"),
    ("gen-regex-and-json-schema", GEN, gsp(regex="a+", json_schema={"type": "object"}), None, 400, "at most one of regex, json_schema and ebnf"),
    ("gen-ebnf-does-not-parse", GEN, gsp(ebnf="root ::= ("), None, 400, "ebnf"),
    # ---- /v1/completions ---------------------------------------------------------------------
    ("cmpl-no-prompt", CMPL, cmpl(prompt=DROP), None, 400, "prompt must be a non-empty string"),
    ("cmpl-prompt-null", CMPL, cmpl(prompt=None), None, 400, "prompt must be a non-empty string"),
    ("cmpl-prompt-empty", CMPL, cmpl(prompt=""), None, 400, "prompt must be a non-empty string"),
    ("cmpl-prompt-number", CMPL, cmpl(prompt=5), None, 400, "prompt must be a non-empty string"),
    ("cmpl-prompt-object", CMPL, cmpl(prompt={"text": "hi"}), None, 400, "prompt must be a non-empty string"),
    ("cmpl-prompt-empty-list", CMPL, cmpl(prompt=[]), None, 400, "prompt must be a non-empty string"),
    ("cmpl-prompt-list-empty-string", CMPL, cmpl(prompt=["a", ""]), None, 400, "prompt must be a non-empty string"),
    ("cmpl-prompt-mixed-strings-and-ids", CMPL, cmpl(prompt=["a", 1]), None, 400, "prompt must be a non-empty string"),
    ("cmpl-prompt-ids-empty-inner", CMPL, cmpl(prompt=[[1, 2], []]), None, 400, "prompt must be a non-empty string"),
    ("cmpl-prompt-ids-string-inside", CMPL, cmpl(prompt=[[1, 2], [3, "4"]]), None, 400, "prompt must be a non-empty string"),
    ("cmpl-prompt-ids-negative", CMPL, cmpl(prompt=[1, -3]), None, 400, "outside the vocabulary"),
    ("cmpl-prompt-ids-beyond-vocab", CMPL, cmpl(prompt=[1, 99999]), None, 400, "outside the vocabulary"),
    ("cmpl-prompt-too-long-text", CMPL, cmpl(prompt=LONG_TEXT), None, 400, "context length"),
    ("cmpl-prompt-too-long-ids", CMPL, cmpl(prompt=LONG_IDS), None, 400, "context length"),
    ("cmpl-suffix", CMPL, cmpl(suffix="The end."), None, 400, "suffix is not supported"),
    ("cmpl-max-tokens-string", CMPL, cmpl(max_tokens="16"), None, 400, "max_tokens must be an integer"),
    ("cmpl-max-tokens-fraction", CMPL, cmpl(max_tokens=1.5), None, 400, "max_tokens must be an integer"),
    ("cmpl-max-tokens-negative", CMPL, cmpl(max_tokens=-1), None, 400, "max_tokens must be >= 0"),
    ("cmpl-max-tokens-bool", CMPL, cmpl(max_tokens=True), None, 400, "max_tokens must be an integer"),
    ("cmpl-min-tokens-negative", CMPL, cmpl(min_tokens=-1), None, 400, "min_tokens must be >= 0"),
    ("cmpl-temperature-negative", CMPL, cmpl(temperature=-1), None, 400, "temperature must be in [0.0, inf]"),
    ("cmpl-temperature-string", CMPL, cmpl(temperature="warm"), None, 400, "temperature must be a finite number"),
    ("cmpl-top-p-above-1", CMPL, cmpl(top_p=2), None, 400, "top_p must be in (0.0, 1.0]"),
    ("cmpl-top-p-negative", CMPL, cmpl(top_p=-0.1), None, 400, "top_p must be in (0.0, 1.0]"),
    ("cmpl-top-k-zero", CMPL, cmpl(top_k=0), None, 400, "top_k must be -1 (whole vocabulary) or >= 1"),
    ("cmpl-min-p-negative", CMPL, cmpl(min_p=-0.5), None, 400, "min_p must be in [0.0, 1.0]"),
    ("cmpl-presence-penalty-too-big", CMPL, cmpl(presence_penalty=5), None, 400, "presence_penalty must be in [-2.0, 2.0]"),
    ("cmpl-frequency-penalty-string", CMPL, cmpl(frequency_penalty="a lot"), None, 400, "frequency_penalty must be a finite number"),
    ("cmpl-repetition-penalty-negative", CMPL, cmpl(repetition_penalty=-1), None, 400, "repetition_penalty must be in (0.0, 2.0]"),
    ("cmpl-n-zero", CMPL, cmpl(n=0), None, 400, "n must be >= 1"),
    ("cmpl-n-negative", CMPL, cmpl(n=-3), None, 400, "n must be >= 1"),
    ("cmpl-n-fraction", CMPL, cmpl(n=1.5), None, 400, "n must be an integer"),
    ("cmpl-n-string", CMPL, cmpl(n="2"), None, 400, "n must be an integer"),
    ("cmpl-n-too-large", CMPL, cmpl(n=1000), None, 400, "--max-n"),
    ("cmpl-best-of-differs-from-n", CMPL, cmpl(best_of=3), None, 400, "best_of different from n"),
    ("cmpl-best-of-zero", CMPL, cmpl(best_of=0), None, 400, "best_of must be >= 1"),
    ("cmpl-best-of-below-n", CMPL, cmpl(n=3, best_of=2), None, 400, "best_of different from n"),
    ("cmpl-stop-number", CMPL, cmpl(stop=5), None, 400, "stop must be a non-empty string or a list of them"),
    ("cmpl-stop-nested-list", CMPL, cmpl(stop=[["x"]]), None, 400, "stop must be a non-empty string or a list of them"),
    ("cmpl-stop-empty-string", CMPL, cmpl(stop=""), None, 400, "stop must be a non-empty string or a list of them"),
    ("cmpl-stop-list-with-empty", CMPL, cmpl(stop=["x", ""]), None, 400, "stop must be a non-empty string or a list of them"),
    ("cmpl-stop-token-ids-negative", CMPL, cmpl(stop_token_ids=[-1]), None, 400, "stop_token_ids holds token id -1"),
    ("cmpl-logprobs-too-many", CMPL, cmpl(logprobs=21), None, 400, "logprobs must be [0, 20]"),
    ("cmpl-logprobs-negative", CMPL, cmpl(logprobs=-1), None, 400, "logprobs must be [0, 20]"),
    ("cmpl-logprobs-bool", CMPL, cmpl(logprobs=True), None, 400, "logprobs must be an integer"),
    ("cmpl-logprobs-string", CMPL, cmpl(logprobs="5"), None, 400, "logprobs must be an integer"),
    ("cmpl-echo-string", CMPL, cmpl(echo="yes"), None, 400, "echo must be true or false"),
    ("cmpl-seed-string", CMPL, cmpl(seed="42"), None, 400, "seed must be an integer"),
    ("cmpl-seed-fraction", CMPL, cmpl(seed=4.2), None, 400, "seed must be an integer"),
    ("cmpl-stream-string", CMPL, cmpl(stream="true"), None, 400, "stream must be true or false"),
    ("cmpl-stream-options-string", CMPL, cmpl(stream=True, stream_options="usage"), None, 400, "stream_options must be an object"),
    ("cmpl-include-usage-string", CMPL, cmpl(stream=True, stream_options={"include_usage": "yes"}), None, 400, "include_usage must be true or false"),
    ("cmpl-logit-bias-word-key", CMPL, cmpl(logit_bias={"hello": 5}), None, 400, "logit_bias key 'hello' is not an integer token id"),
    ("cmpl-logit-bias-list", CMPL, cmpl(logit_bias=[5]), None, 400, "logit_bias must be an object"),
    ("cmpl-logit-bias-string-value", CMPL, cmpl(logit_bias={"5": "up"}), None, 400, "logit_bias['5'] must be a finite number"),
    ("cmpl-ignore-eos-string", CMPL, cmpl(ignore_eos="yes"), None, 400, "ignore_eos must be true or false"),
    ("cmpl-rid-number", CMPL, cmpl(rid=5), None, 400, "rid must be a string"),
    ("cmpl-cache-salt-number", CMPL, cmpl(cache_salt=5), None, 400, "cache_salt must be a string"),
    ("cmpl-regex-does-not-compile", CMPL, cmpl(regex="[a-"), None, 400, "regex"),
    ("cmpl-json-schema-not-json", CMPL, cmpl(json_schema="{"), None, 400, "json_schema"),
    # ---- /v1/chat/completions: messages ------------------------------------------------------
    ("chat-no-messages", CHAT, chat(messages=DROP), None, 400, "messages must be a non-empty list"),
    ("chat-messages-null", CHAT, chat(messages=None), None, 400, "messages must be a non-empty list"),
    ("chat-messages-empty", CHAT, chat(messages=[]), None, 400, "messages must be a non-empty list"),
    ("chat-messages-string", CHAT, chat(messages="hello"), None, 400, "messages must be a non-empty list"),
    ("chat-messages-object", CHAT, chat(messages={"role": "user", "content": "hi"}), None, 400, "messages must be a non-empty list"),
    ("chat-message-string", CHAT, msgs("hello"), None, 400, "messages[0] must be an object with role and content"),
    ("chat-message-no-role", CHAT, msgs({"content": "hi"}), None, 400, "messages[0].role must be a string"),
    ("chat-message-role-number", CHAT, msgs({"role": 1, "content": "hi"}), None, 400, "messages[0].role must be a string"),
    ("chat-message-unknown-role", CHAT, msgs({"role": "robot", "content": "hi"}), None, 400, "messages[0].role must be one of system, developer, user, assistant, tool; got 'robot'"),
    ("chat-second-message-bad-role", CHAT, msgs({"role": "user", "content": "hi"}, {"role": "narrator", "content": "x"}), None, 400, "messages[1].role must be one of"),
    ("chat-content-number", CHAT, msgs({"role": "user", "content": 5}), None, 400, "messages[0].content must be a string or a list of text parts, got int"),
    ("chat-content-object", CHAT, msgs({"role": "user", "content": {"text": "hi"}}), None, 400, "messages[0].content must be a string or a list of text parts, got dict"),
    ("chat-user-content-null", CHAT, msgs({"role": "user", "content": None}), None, 400, "messages[0].content must be a string or a list of text parts"),
    ("chat-user-content-missing", CHAT, msgs({"role": "user"}), None, 400, "messages[0].content must be a string or a list of text parts"),
    ("chat-content-part-string", CHAT, msgs({"role": "user", "content": ["hi"]}), None, 400, "messages[0].content[0] must be an object like {type, text}"),
    ("chat-content-part-text-number", CHAT, msgs({"role": "user", "content": [{"type": "text", "text": 5}]}), None, 400, "messages[0].content[0].text must be a string"),
    ("chat-content-part-image", CHAT, msgs({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}), None, 400, "only 'text' parts are supported"),
    ("chat-tool-message-without-call-id", CHAT, msgs({"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}), None, 400, "messages[1].tool_call_id must be the id of the call it answers"),
    ("chat-tool-message-name-number", CHAT, msgs({"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "c1", "name": 5, "content": "42"}), None, 400, "messages[1].name must be a string"),
    ("chat-user-message-with-tool-calls", CHAT, msgs({"role": "user", "content": "hi", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}), None, 400, "messages[0]: only assistant messages carry tool_calls"),
    ("chat-assistant-tool-calls-and-function-call", CHAT, msgs({"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}], "function_call": {"name": "f", "arguments": "{}"}}), None, 400, "send tool_calls or function_call, not both"),
    ("chat-assistant-tool-calls-not-list", CHAT, msgs({"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": "f()"}), None, 400, "tool_calls"),
    ("chat-assistant-tool-call-bad-arguments", CHAT, msgs({"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}), None, 400, "arguments"),
    ("chat-prompt-too-long", CHAT, msgs({"role": "user", "content": LONG_TEXT}), None, 400, "context length"),
    # ---- /v1/chat/completions: sampling and output fields ------------------------------------
    ("chat-max-tokens-negative", CHAT, chat(max_tokens=-1), None, 400, "max_tokens must be >= 0"),
    ("chat-max-tokens-string", CHAT, chat(max_tokens="10"), None, 400, "max_tokens must be an integer"),
    ("chat-max-tokens-fraction", CHAT, chat(max_tokens=10.5), None, 400, "max_tokens must be an integer"),
    ("chat-max-completion-tokens-negative", CHAT, chat(max_completion_tokens=-5), None, 400, "max_completion_tokens must be >= 0"),
    ("chat-max-completion-tokens-string", CHAT, chat(max_completion_tokens="5"), None, 400, "max_completion_tokens must be an integer"),
    ("chat-temperature-negative", CHAT, chat(temperature=-1), None, 400, "temperature must be in [0.0, inf]"),
    ("chat-temperature-nan", CHAT, b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', None, 400, "temperature must be a finite number"),
    ("chat-top-p-zero", CHAT, chat(top_p=0), None, 400, "top_p must be in (0.0, 1.0]"),
    ("chat-top-k-string", CHAT, chat(top_k="all"), None, 400, "top_k must be an integer"),
    ("chat-n-zero", CHAT, chat(n=0), None, 400, "n must be >= 1"),
    ("chat-n-fraction", CHAT, chat(n=2.5), None, 400, "n must be an integer"),
    ("chat-n-too-large", CHAT, chat(n=500), None, 400, "--max-n"),
    ("chat-stop-number", CHAT, chat(stop=7), None, 400, "stop must be a non-empty string or a list of them"),
    ("chat-stop-nested-list", CHAT, chat(stop=[["User:"]]), None, 400, "stop must be a non-empty string or a list of them"),
    ("chat-logprobs-string", CHAT, chat(logprobs="yes"), None, 400, "logprobs must be true or false"),
    ("chat-logprobs-number", CHAT, chat(logprobs=5), None, 400, "logprobs must be true or false"),
    ("chat-top-logprobs-too-many", CHAT, chat(logprobs=True, top_logprobs=21), None, 400, "top_logprobs must be [0, 20]"),
    ("chat-top-logprobs-negative", CHAT, chat(logprobs=True, top_logprobs=-1), None, 400, "top_logprobs must be [0, 20]"),
    ("chat-top-logprobs-without-logprobs", CHAT, chat(top_logprobs=3), None, 400, "top_logprobs needs logprobs: true"),
    ("chat-seed-string", CHAT, chat(seed="7"), None, 400, "seed must be an integer"),
    ("chat-stream-string", CHAT, chat(stream="yes"), None, 400, "stream must be true or false"),
    ("chat-stream-options-list", CHAT, chat(stream=True, stream_options=["include_usage"]), None, 400, "stream_options must be an object"),
    ("chat-rid-number", CHAT, chat(rid=12), None, 400, "rid must be a string"),
    ("chat-extra-key-number", CHAT, chat(extra_key=3), None, 400, "extra_key must be a string"),
    ("chat-logit-bias-word-key", CHAT, chat(logit_bias={"the": -100}), None, 400, "logit_bias key 'the' is not an integer token id"),
    ("chat-logit-bias-id-beyond-vocab", CHAT, chat(logit_bias={"99999": 1}), None, 400, "logit_bias token id 99999 is outside the vocabulary"),
    ("chat-frequency-penalty-too-small", CHAT, chat(frequency_penalty=-2.5), None, 400, "frequency_penalty must be in [-2.0, 2.0]"),
    ("chat-template-kwargs-string", CHAT, chat(chat_template_kwargs="x"), None, 400, "chat_template_kwargs must be an object"),
    ("chat-continue-final-message-string", CHAT, chat(continue_final_message="yes"), None, 400, "continue_final_message must be true or false"),
    # ---- /v1/chat/completions: response_format -----------------------------------------------
    ("chat-response-format-unknown-type", CHAT, rf({"type": "xml"}), None, 400, "response_format must be {type: text | json_object | json_schema}"),
    ("chat-response-format-string", CHAT, rf("json"), None, 400, "response_format must be {type: text | json_object | json_schema}"),
    ("chat-response-format-no-type", CHAT, rf({"json_schema": {"schema": {}}}), None, 400, "response_format must be {type: text | json_object | json_schema}"),
    ("chat-response-format-schema-missing", CHAT, rf({"type": "json_schema"}), None, 400, "response_format.json_schema.schema must be a JSON schema object"),
    ("chat-response-format-schema-string", CHAT, rf({"type": "json_schema", "json_schema": {"name": "a", "schema": "{}"}}), None, 400, "response_format.json_schema.schema must be a JSON schema object"),
    ("chat-response-format-strict-string", CHAT, rf({"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}, "strict": "yes"}}), None, 400, "response_format.json_schema.strict must be true or false"),
    ("chat-response-format-bad-schema", CHAT, rf({"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "nonsense"}}}), None, 400, "schema"),
    ("chat-response-format-and-regex", CHAT, chat(response_format={"type": "json_object"}, regex="a+"), None, 400, "pass either response_format or one of regex/json_schema/ebnf"),
    # ---- /v1/chat/completions: tools ---------------------------------------------------------
    ("chat-tools-string", CHAT, chat(tools="get_weather"), None, 400, "tools must be a list of tool objects"),
    ("chat-tools-object", CHAT, chat(tools=TOOL), None, 400, "tools must be a list of tool objects"),
    ("chat-tool-not-object", CHAT, chat(tools=[5]), None, 400, "function tools are the only kind"),
    ("chat-tool-unknown-type", CHAT, chat(tools=[{"type": "retrieval"}]), None, 400, "function tools are the only kind"),
    ("chat-tool-function-missing", CHAT, chat(tools=[{"type": "function"}]), None, 400, ".function must be an object with a name"),
    ("chat-tool-name-missing", CHAT, chat(tools=[fn_tool(parameters={"type": "object"})]), None, 400, ".function.name must be 1-64 letters"),
    ("chat-tool-name-with-spaces", CHAT, chat(tools=[fn_tool(name="get weather")]), None, 400, ".function.name must be 1-64 letters"),
    ("chat-tool-name-too-long", CHAT, chat(tools=[fn_tool(name="f" * 65)]), None, 400, ".function.name must be 1-64 letters"),
    ("chat-tool-description-number", CHAT, chat(tools=[fn_tool(name="f", description=5)]), None, 400, ".function.description must be a string"),
    ("chat-tool-parameters-string", CHAT, chat(tools=[fn_tool(name="f", parameters="{}")]), None, 400, ".function.parameters must be a JSON schema of an object"),
    ("chat-tool-strict-string", CHAT, chat(tools=[fn_tool(name="f", strict="yes")]), None, 400, ".function.strict must be true or false"),
    ("chat-tools-duplicate-name", CHAT, chat(tools=[TOOL, TOOL]), None, 400, "a second tool named 'get_weather'"),
    ("chat-tool-choice-unknown-string", CHAT, chat(tools=[TOOL], tool_choice="sometimes"), None, 400, 'tool_choice must be "none", "auto", "required"'),
    ("chat-tool-choice-absent-function", CHAT, chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "get_time"}}), None, 400, "tool_choice names 'get_time', which is not among the tools (get_weather)"),
    ("chat-tool-choice-name-number", CHAT, chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": 5}}), None, 400, "tool_choice.function.name must be a string"),
    ("chat-tool-choice-required-without-tools", CHAT, chat(tool_choice="required"), None, 400, "tool_choice 'required' needs a non-empty tools list"),
    ("chat-parallel-tool-calls-string", CHAT, chat(tools=[TOOL], parallel_tool_calls="yes"), None, 400, "parallel_tool_calls must be true or false"),
    ("chat-tools-and-functions", CHAT, chat(tools=[TOOL], functions=[TOOL["function"]]), None, 400, "send either tools/tool_choice or the legacy functions/function_call"),
    ("chat-functions-not-list", CHAT, chat(functions={"name": "f"}), None, 400, "functions must be a list of function objects"),
    ("chat-function-call-bad", CHAT, chat(functions=[TOOL["function"]], function_call=5), None, 400, 'function_call must be "none", "auto" or {"name": ...}'),
    ("chat-tools-without-parser", CHAT, chat(tools=[TOOL]), None, 400, "--tool-call-parser"),
    ("chat-tool-choice-required-empty-tools", CHAT, chat(tools=[], tool_choice="required"), None, 400, "tool_choice 'required' needs a non-empty tools list"),
    ("chat-tool-choice-function-string", CHAT, chat(tools=[TOOL], tool_choice={"type": "function", "function": "get_weather"}), None, 400, "tool_choice.function.name must be a string"),
    ("chat-functions-item-number", CHAT, chat(functions=[5]), None, 400, "functions[0].function must be an object with a name"),
    ("chat-function-call-absent-function", CHAT, chat(functions=[TOOL["function"]], function_call={"name": "nope"}), None, 400, "function_call names 'nope', which is not among the tools"),
    ("chat-function-call-name-number", CHAT, chat(functions=[TOOL["function"]], function_call={"name": 5}), None, 400, 'function_call must be "none", "auto" or {"name": ...}'),
    # ---- more: chat history, template kwargs, constraints, per-prompt lists -----------------
    ("chat-continue-final-after-user", CHAT, chat(continue_final_message=True), None, 400, "continue_final_message needs the last message to be assistant's"),
    ("chat-assistant-content-number", CHAT, msgs({"role": "user", "content": "hi"}, {"role": "assistant", "content": 5}), None, 400, "messages[1].content must be a string or a list of text parts, got int"),
    ("chat-tool-message-content-null", CHAT, msgs({"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "c1", "content": None}), None, 400, "messages[1].content must be a string or a list of text parts"),
    ("chat-history-tool-call-id-number", CHAT, msgs({"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [{"id": 5, "type": "function", "function": {"name": "f", "arguments": "{}"}}]}), None, 400, "messages[1].tool_calls[0].id must be a string"),
    ("chat-history-tool-call-number", CHAT, msgs({"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [5]}), None, 400, "messages[1].tool_calls[0] must be"),
    ("chat-history-tool-call-wrong-type", CHAT, msgs({"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "retrieval", "function": {"name": "f", "arguments": "{}"}}]}), None, 400, "messages[1].tool_calls[0] must be"),
    ("chat-history-tool-call-no-name", CHAT, msgs({"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"arguments": "{}"}}]}), None, 400, "messages[1].tool_calls[0].function must be an object with a string name"),
    ("chat-history-tool-call-arguments-list", CHAT, msgs({"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}), None, 400, "messages[1].tool_calls[0].function.arguments must be a JSON object"),
    ("chat-history-function-call-string", CHAT, msgs({"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "function_call": "f()"}), None, 400, "function must be an object with a string name"),
    ("chat-template-kwargs-sets-messages", CHAT, chat(chat_template_kwargs={"messages": 5}), None, 400, "chat_template_kwargs must not set 'messages'"),
    ("chat-template-kwargs-sets-tools", CHAT, chat(chat_template_kwargs={"tools": 5}), None, 400, "chat_template_kwargs must not set 'tools'"),
    ("chat-template-kwargs-sets-generation-prompt", CHAT, chat(chat_template_kwargs={"add_generation_prompt": 5}), None, 400, "chat_template_kwargs must not set 'add_generation_prompt'"),
    ("chat-response-format-strict-missing-ref", CHAT, rf({"type": "json_schema", "json_schema": {"name": "a", "strict": True, "schema": {"$ref": "#/$defs/x"}}}), None, 400, "json_schema $ref points at '/$defs/x', which does not exist"),
    ("chat-stop-token-ids-string", CHAT, chat(stop_token_ids="x"), None, 400, "stop_token_ids must be a list of integer token ids"),
    ("chat-regex-does-not-compile", CHAT, chat(regex="("), None, 400, "the regex constraint is not a valid regex"),
    ("chat-ebnf-does-not-parse", CHAT, chat(ebnf="root ::= ("), None, 400, "invalid ebnf grammar"),
    ("chat-json-schema-not-json", CHAT, chat(json_schema="{"), None, 400, "json_schema is not valid JSON"),
    ("cmpl-min-tokens-above-max-tokens", CMPL, cmpl(min_tokens=5, max_tokens=2), None, 400, "min_new_tokens (5) must be <= max_new_tokens (2)"),
    ("cmpl-logprobs-float", CMPL, cmpl(logprobs=2.0), None, 400, "logprobs must be an integer"),
    ("cmpl-prompt-ids-bool-inside", CMPL, cmpl(prompt=[1, True]), None, 400, "prompt must be a non-empty string"),
    ("cmpl-prompt-ids-too-deep", CMPL, cmpl(prompt=[[[1]]]), None, 400, "prompt must be a non-empty string"),
    ("cmpl-prompt-batch-last-empty", CMPL, cmpl(prompt=["hi"] * 99 + [""]), None, 400, "prompt must be a non-empty string"),
    ("gen-stream-options", GEN, gen(stream_options={"include_usage": True}), None, 400, "unknown field(s) ['stream_options']"),
    ("gen-top-logprobs-num-bool", GEN, gen(return_logprob=True, top_logprobs_num=True), None, 400, "top_logprobs_num must be int"),
    ("gen-return-logprob-number", GEN, gen(return_logprob=1), None, 400, "return_logprob must be bool"),
    ("gen-logprob-start-len-list-length", GEN, gen(text=["a", "b"], return_logprob=True, logprob_start_len=[0]), None, 400, "logprob_start_len has 1 entries but there are 2 prompts"),
    ("gen-extra-key-list-length", GEN, gen(text=["a", "b"], extra_key=["x"]), None, 400, "extra_key has 1 entries but there are 2 prompts"),
    ("gen-json-schema-missing-ref", GEN, gsp(json_schema={"$ref": "#/$defs/missing"}), None, 400, "json_schema $ref points at '/$defs/missing', which does not exist"),
    ("gen-json-schema-nested-bad-type", GEN, gsp(json_schema={"type": "object", "properties": {"a": {"type": "nonsense"}}}), None, 400, "json_schema is not a valid JSON Schema at properties/a/type"),
    ("gen-json-schema-bad-pattern", GEN, gsp(json_schema={"type": "string", "pattern": "("}), None, 400, "json_schema is not a valid JSON Schema at pattern"),
    ("gen-json-schema-array-text", GEN, gsp(json_schema="[1, 2]"), None, 400, "json_schema must be a JSON object (a schema), not list"),
    ("gen-json-schema-list", GEN, gsp(json_schema=[1]), None, 400, "json_schema must be a string, got list"),
    ("gen-json-schema-too-deep", GEN, gsp(json_schema=DEEP_SCHEMA), None, 400, "json_schema nests deeper than 64 levels"),
    ("gen-ebnf-undefined-rule", GEN, gsp(ebnf="root ::= foo"), None, 400, "Rule 'foo' not found"),
    ("gen-ebnf-number", GEN, gsp(ebnf=5), None, 400, "ebnf must be a string, got int"),
    ("gen-ebnf-and-regex", GEN, gsp(ebnf='root ::= "a"', regex="a"), None, 400, "at most one of regex, json_schema and ebnf"),
    ("gen-regex-lookahead", GEN, gsp(regex="(?=a)a"), None, 400, "lookaround or backreferences"),
    ("gen-regex-backreference", GEN, gsp(regex="(a)\\1"), None, 400, "lookaround or backreferences"),
    # ---- a bad streamed request is an HTTP 400 before the stream starts ---------------------
    ("gen-stream-bad-temperature", GEN, gen(stream=True, sampling_params={"temperature": -1}), None, 400, "temperature must be in [0.0, inf]"),
    ("cmpl-stream-bad-temperature", CMPL, cmpl(stream=True, temperature=-1), None, 400, "temperature must be in [0.0, inf]"),
    ("cmpl-stream-bad-prompt-ids", CMPL, cmpl(stream=True, prompt=[99999]), None, 400, "outside the vocabulary"),
    ("chat-stream-bad-temperature", CHAT, chat(stream=True, temperature=-1), None, 400, "temperature must be in [0.0, inf]"),
    ("chat-stream-bad-role", CHAT, _merge(msgs({"role": "robot", "content": "hi"}), {"stream": True}), None, 400, "messages[0].role must be one of"),
    # ---- found by the table's first run, fixed since ---------------------------------------
    ("gen-gzip-body", GEN, gen(), {"Content-Encoding": "gzip"}, 415, "must not be compressed (Content-Encoding: gzip)"),
    ("cmpl-gzip-body", CMPL, cmpl(), {"Content-Encoding": "gzip"}, 415, "must not be compressed"),
    ("cmpl-stream-options-without-stream", CMPL, cmpl(stream_options={"include_usage": True}), None, 400, "stream_options is only allowed with stream: true"),
    ("chat-stream-options-without-stream", CHAT, chat(stream_options={"include_usage": "yes"}), None, 400, "stream_options is only allowed with stream: true"),
    ("chat-message-name-number", CHAT, msgs({"role": "user", "content": "hi", "name": 5}), None, 400, "messages[0].name must be a string"),
    ("gen-logit-bias-superscript-key", GEN, gsp(logit_bias={"²": 1}), None, 400, "is not an integer token id"),
    ("cmpl-logit-bias-double-minus", CMPL, cmpl(logit_bias={"--5": 1}), None, 400, "is not an integer token id"),
    ("chat-logit-bias-superscript-key", CHAT, chat(logit_bias={"¹": 1}), None, 400, "is not an integer token id"),
    ("gen-logit-bias-overflow", GEN, gsp(logit_bias={"5": 1e39}), None, 400, "is outside [-1e+06, 1e+06]"),
    ("cmpl-logit-bias-overflow", CMPL, cmpl(logit_bias={"5": -1e308}), None, 400, "is outside [-1e+06, 1e+06]"),
    ("gen-regex-over-lexer-limit", GEN, gsp(regex="(a{1000}){1000}"), None, 400, "cannot be followed past output token"),
    ("gen-ebnf-without-end", GEN, gsp(ebnf='root ::= "a" root'), None, 400, "cannot be followed past output token"),
    ("cmpl-regex-over-lexer-limit", CMPL, cmpl(regex="(a{1000}){1000}"), None, 400, "cannot be followed past output token"),
]  # fmt: skip


def _post(url: str, route: str, body: Any, headers: dict | None = None) -> tuple[int, str]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + route, data=raw, method="POST")
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def check_case(url: str, route: str, body: Any, headers: dict | None, status: int, needle: str):
    """Post one case; what is wrong with the answer ([] when it is as expected)."""
    got, text = _post(url, route, body, headers)
    problems = [] if got == status else [f"status {got}, expected {status}"]
    try:
        err = json.loads(text)["error"]
        message = err["message"]
        assert isinstance(message, str)
    except (ValueError, KeyError, TypeError, AssertionError):
        return [*problems, f"not a JSON error body {{'error': {{'message': ...}}}}: {text[:500]!r}"]
    if needle not in message:
        problems.append(f"the message does not contain {needle!r}")
    if route != GEN and not (err.get("type") == "invalid_request_error" and "param" in err):
        problems.append("not the OpenAI error shape {message, type, param, code}")
    if "Traceback" in message or 'File "' in message:
        problems.append("internal exception text in the message")
    if problems:
        problems.append(f"answer: {got} {text[:500]}")
    return problems


def test_table_is_large_and_ids_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    assert len(CASES) >= 100
    assert all(400 <= c[4] < 500 for c in CASES)


@pytest.mark.parametrize(
    "route,body,headers,status,needle", [pytest.param(*c[1:], id=c[0]) for c in CASES]
)
def test_bad_input(server, route, body, headers, status, needle):
    problems = check_case(server.url, route, body, headers, status, needle)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("route", sorted(ROUTE_BODIES))
def test_still_serves_after_bad_inputs(server, route):
    status, text = _post(server.url, route, ROUTE_BODIES[route])
    assert status == 200, text
    out = json.loads(text)
    if route == GEN:
        assert out["meta_info"]["completion_tokens"] >= 1, out
    else:
        assert out["choices"] and out["usage"]["completion_tokens"] >= 1, out
