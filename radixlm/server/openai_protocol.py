"""OpenAI protocol requests: request bodies → native ``/generate`` calls (parsing, validation
and the field mapping). The fields each route reads are in ``openai_fields``; the error body
of any exception in ``openai_errors``.

Pure functions; no I/O (``openai_api`` does the HTTP; ``openai_results`` builds the responses
from the native results).

Requests are validated here, with messages naming the OpenAI field (``param``). Fields whose
OpenAI name equals the native sampling name (``temperature``, ``top_p``, ``stop``, penalties,
``logit_bias``, SGLang extras such as ``top_k``) are passed through and range-checked by the
engine, which names them the same way. Other OpenAI fields are ignored (clients send many:
``user``, ``metadata``, ``store``, ...) but never silently: they are logged and named in the
response header ``X-Ignored-Fields`` (``OpenAICall.ignored``); SGLang's own extensions are
accepted at their default only. ``model`` must be a name the server serves (else a 404
``model_not_found``); responses name the served model.
``cache_salt`` and ``extra_key`` put the request in a prefix-cache namespace, as on ``/generate``.
``max_tokens`` absent means 16 for completions and "until the context ends" for chat; ``null``
means until the context ends (``max_new_tokens = context_length``, capped per prompt by the
engine).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from radixlm.errors import RequestError
from radixlm.function_call.formats import ToolCallFormat, trigger_is_special
from radixlm.function_call.literals import token_literal
from radixlm.function_call.tools import ToolRequest, ToolSpecError, parse_tool_request
from radixlm.reasoning import ReasoningFormat, prompt_phase
from radixlm.server.chat_template import render_chat, split_stops
from radixlm.server.native_request import at_default
from radixlm.server.openai_errors import OpenAIRequestError
from radixlm.server.openai_fields import (
    CHAT_FIELDS,
    COMPLETION_FIELDS,
    SAME_NAME,
    SGLANG_CHAT_DEFAULT_ONLY,
    SGLANG_COMPLETION_DEFAULT_ONLY,
    SGLANG_EXTRAS,
)

MAX_TOP_LOGPROBS = 20
COMPLETION_DEFAULT_MAX_TOKENS = 16


@dataclass
class OpenAICall:
    """A parsed OpenAI request: the native body to send plus what building the answer needs."""

    kind: str  # "completion" | "chat"
    native: dict[str, Any]
    model: str
    n: int
    num_prompts: int
    stream: bool
    include_usage: bool
    logprobs: int | None  # None: no logprobs; else alternatives per token
    id: str
    echo_texts: list[str] | None = None  # completions with echo: each prompt's text
    created: int = field(default_factory=lambda: int(time.time()))
    # chat with tools the model may call: the validated tools and the format its output is
    # parsed with (openai_results turns calls into ``tool_calls``)
    tools: ToolRequest | None = None
    tool_format: ToolCallFormat | None = None
    # --reasoning-parser: each choice's text splits into reasoning and content; ``inside``:
    # the prompt leaves the model inside a thinking block
    reasoning: ReasoningFormat | None = None
    reasoning_inside: bool = False
    ignored: list[str] = field(default_factory=list)  # body fields this server did not read

    @property
    def object_name(self) -> str:
        return "text_completion" if self.kind == "completion" else "chat.completion"


# ---- field validation --------------------------------------------------------------------
def _int(body: dict, name: str, lo: int | None = None, hi: int | None = None) -> int | None:
    x = body.get(name)
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, int):
        raise OpenAIRequestError(f"{name} must be an integer, got {x!r}", name)
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise OpenAIRequestError(f"{name} must be {rng}, got {x}", name)
    return x


def _bool(body: dict, name: str, default: bool = False) -> bool:
    x = body.get(name)
    if x is None:
        return default
    if not isinstance(x, bool):
        raise OpenAIRequestError(f"{name} must be true or false, got {x!r}", name)
    return x


def _sampling(body: dict, max_tokens: int | None, context_length: int) -> dict[str, Any]:
    """The native ``sampling_params`` shared by both endpoints."""
    sp: dict[str, Any] = {"max_new_tokens": context_length if max_tokens is None else max_tokens}
    sp["n"] = _int(body, "n", lo=1) or 1
    for key in SAME_NAME + SGLANG_EXTRAS:
        if body.get(key) is not None:
            sp[key] = body[key]
    seed = _int(body, "seed")
    if seed is not None:
        sp["sampling_seed"] = seed
    min_tokens = _int(body, "min_tokens", lo=0)
    if min_tokens is not None:
        sp["min_new_tokens"] = min_tokens
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (
        isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)
    ):
        raise OpenAIRequestError("stop must be a non-empty string or a list of them", "stop")
    if stop:
        sp["stop"] = stop
    return sp


def _common(
    body: dict, backend: Any, kind: str, sp: dict, logprobs: int | None, num_prompts: int
) -> OpenAICall:
    stream = _bool(body, "stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise OpenAIRequestError("stream_options must be an object", "stream_options")
    if opts is not None and not stream:
        raise OpenAIRequestError(
            "stream_options is only allowed with stream: true", "stream_options"
        )
    include_usage = stream and _bool(opts or {}, "include_usage")
    rid = body.get("rid")
    if rid is not None and not isinstance(rid, str):
        raise OpenAIRequestError("rid must be a string", "rid")
    backend.check_model(body.get("model"))
    prefix = "cmpl" if kind == "completion" else "chatcmpl"
    call = OpenAICall(
        kind=kind,
        native={"sampling_params": sp, "stream": stream},
        model=backend.served_model_name,
        n=sp["n"],
        num_prompts=num_prompts,
        stream=stream,
        include_usage=include_usage,
        logprobs=logprobs,
        id=rid or f"{prefix}-{uuid.uuid4().hex}",
    )
    call.native["rid"] = call.id
    for key in ("cache_salt", "extra_key"):  # prefix-cache namespaces, as on /generate
        value = body.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise OpenAIRequestError(f"{key} must be a string", key)
            call.native[key] = value
    if logprobs is not None:
        call.native.update(
            return_logprob=True, top_logprobs_num=logprobs, return_text_in_logprobs=True
        )
    return call


def _check_sglang_extensions(body: dict, table: dict[str, Any]) -> None:
    """SGLang's extension fields that are not built here: a 400 unless at their default."""
    for key in sorted(body.keys() & table.keys()):
        if not at_default(body[key], table[key]):
            raise OpenAIRequestError(
                f"{key} is not supported by this server (an SGLang extension; only its "
                f"default, {json.dumps(table[key])}, is accepted)",
                key,
            )


# ---- /v1/completions ---------------------------------------------------------------------
def parse_completion_request(body: dict[str, Any], backend: Any) -> OpenAICall:
    """Validate a ``/v1/completions`` body; see the module docstring for the mapping."""
    if body.get("suffix"):
        raise OpenAIRequestError("suffix is not supported", "suffix")
    best_of = _int(body, "best_of", lo=1)
    if best_of is not None and best_of != (_int(body, "n", lo=1) or 1):
        raise OpenAIRequestError("best_of different from n is not supported", "best_of")
    key, prompt, num_prompts = _completion_prompt(body.get("prompt"))
    max_tokens = _int(body, "max_tokens", lo=0)
    if "max_tokens" not in body:
        max_tokens = COMPLETION_DEFAULT_MAX_TOKENS
    sp = _sampling(body, max_tokens, backend.context_length)
    logprobs = _int(body, "logprobs", lo=0, hi=MAX_TOP_LOGPROBS)
    _check_sglang_extensions(body, SGLANG_COMPLETION_DEFAULT_ONLY)
    call = _common(body, backend, "completion", sp, logprobs, num_prompts)
    call.ignored = sorted(
        k for k in body if k not in COMPLETION_FIELDS and k not in SGLANG_COMPLETION_DEFAULT_ONLY
    )
    call.native[key] = prompt
    if _bool(body, "echo"):
        call.echo_texts = _echo_texts(key, prompt, backend.tokenizer)
        if logprobs is not None:
            call.native["logprob_start_len"] = 0
    return call


def _is_id(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _completion_prompt(p: Any) -> tuple[str, Any, int]:
    """(native key, value, number of prompts)."""
    if isinstance(p, str) and p:
        return "text", p, 1
    if isinstance(p, list) and p:
        if all(isinstance(x, str) and x for x in p):
            return "text", p, len(p)
        if all(_is_id(x) for x in p):
            return "input_ids", p, 1
        if all(isinstance(x, list) and x and all(_is_id(t) for t in x) for x in p):
            return "input_ids", p, len(p)
    raise OpenAIRequestError(
        "prompt must be a non-empty string, a list of non-empty strings, a list of token ids "
        "or a list of non-empty token id lists",
        "prompt",
    )


def _echo_texts(key: str, prompt: Any, tokenizer: Any | None) -> list[str]:
    if key == "text":
        return [prompt] if isinstance(prompt, str) else list(prompt)
    if tokenizer is None:
        raise OpenAIRequestError("echo of token id prompts needs a tokenizer", "echo")
    lists = [prompt] if _is_id(prompt[0]) else prompt
    vocab = len(tokenizer)
    for ids in lists:  # decoded here, before the engine checks them: check them first
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise OpenAIRequestError(
                f"prompt token id {bad} is outside the vocabulary [0, {vocab})", "prompt"
            )
    return [tokenizer.decode(ids, skip_special_tokens=False) for ids in lists]


# ---- /v1/chat/completions ----------------------------------------------------------------
def parse_chat_request(body: dict[str, Any], backend: Any) -> OpenAICall:
    """Validate a ``/v1/chat/completions`` body, render its messages and build the call."""
    try:
        tools = parse_tool_request(body)
    except ToolSpecError as e:
        raise OpenAIRequestError(str(e), e.param) from e
    continue_final = _bool(body, "continue_final_message")
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise OpenAIRequestError("chat_template_kwargs must be an object", "chat_template_kwargs")
    template = backend.chat_template
    try:
        ids = render_chat(
            template,
            backend.tokenizer,
            body.get("messages"),
            add_generation_prompt=not continue_final,
            continue_final_message=continue_final,
            chat_template_kwargs=kwargs,
            tools=[t.as_openai() for t in tools.tools] if tools else None,
        )
    except OpenAIRequestError:
        raise
    except RequestError as e:
        raise OpenAIRequestError(str(e), "messages") from e
    max_tokens = _int(body, "max_tokens", lo=0)
    max_completion = _int(body, "max_completion_tokens", lo=0)
    limit = max_completion if max_completion is not None else max_tokens
    sp = _sampling(body, limit, backend.context_length)
    stop_strings, extra_ids = split_stops(template, backend.tokenizer)
    stop = list(dict.fromkeys(sp.get("stop", []) + stop_strings))
    if stop:
        sp["stop"] = stop
    if extra_ids:
        user_ids = sp.get("stop_token_ids") or []
        sp["stop_token_ids"] = (user_ids if isinstance(user_ids, list) else [user_ids]) + extra_ids
    _response_format(body.get("response_format"), sp, backend)
    fmt = _tool_constraints(tools, sp, backend) if tools is not None and tools.active else None
    top = _int(body, "top_logprobs", lo=0, hi=MAX_TOP_LOGPROBS)
    want_logprobs = _bool(body, "logprobs")
    if top and not want_logprobs:
        raise OpenAIRequestError("top_logprobs needs logprobs: true", "top_logprobs")
    _check_sglang_extensions(body, SGLANG_CHAT_DEFAULT_ONLY)
    call = _common(body, backend, "chat", sp, (top or 0) if want_logprobs else None, 1)
    call.ignored = sorted(
        k for k in body if k not in CHAT_FIELDS and k not in SGLANG_CHAT_DEFAULT_ONLY
    )
    call.native["input_ids"] = ids
    if fmt is not None:
        call.tools, call.tool_format = tools, fmt
    constrained = any(sp.get(k) for k in ("ebnf", "regex", "json_schema"))
    _reasoning(body, backend, call, ids, constrained)
    return call


def _reasoning(
    body: dict[str, Any], backend: Any, call: OpenAICall, ids: list[int], constrained: bool
) -> None:
    """With ``--reasoning-parser``: the response splits the thinking into ``reasoning_content``
    (unless ``separate_reasoning: false``), and a constraint (response_format, tools) applies
    to the answer after the reasoning (``require_reasoning``)."""
    setup = getattr(backend, "reasoning", None)
    if setup is None:
        return
    if constrained:
        call.native["require_reasoning"] = True
    if _bool(body, "separate_reasoning", default=True):
        fmt, tok = setup.fmt, backend.tokenizer
        call.reasoning = fmt
        if setup.marker_ids is not None:
            call.reasoning_inside = prompt_phase(ids, *setup.marker_ids) == "thinking"
        else:
            call.reasoning_inside = fmt.starts_inside(tok.decode(ids, skip_special_tokens=False))
        special = set(getattr(tok, "all_special_ids", None) or [])
        if setup.marker_ids is not None and special.intersection(setup.marker_ids):
            call.native["sampling_params"]["skip_special_tokens"] = False  # keep the markers


def _tool_constraints(tools: ToolRequest, sp: dict[str, Any], backend: Any) -> ToolCallFormat:
    """The server's tool-call format for a request whose model may call tools, and the grammar
    (sampling parameter ``ebnf``) that makes every call the model writes well-formed in that
    format with arguments valid for the tool's schema: the whole output for ``required`` and
    a named ``tool_choice``, everything from the trigger on for ``auto`` (free text before)."""
    fmt = getattr(backend, "tool_format", None)
    param = "functions" if tools.legacy else "tools"
    if fmt is None:
        raise OpenAIRequestError(
            "this server has no tool-call parser for its chat template; start it with "
            "--tool-call-parser hermes | llama3_json | mistral (the format the model writes "
            "calls in)",
            param,
        )
    if trigger_is_special(fmt, backend.tokenizer):
        sp["skip_special_tokens"] = False  # the parser must see the trigger token
    if any(sp.get(k) for k in ("regex", "json_schema", "ebnf")):
        raise OpenAIRequestError(
            "tool calls are constrained to the tools' schemas (and with tool_choice 'required' "
            "or a named function the whole output is calls); this cannot be combined with "
            "response_format, regex, json_schema or ebnf: send tool_choice 'none' or drop "
            "the other constraint",
            "function_call" if tools.legacy else "tool_choice",
        )
    sp["ebnf"] = fmt.grammar(tools, token_literal(backend.tokenizer))
    return fmt


def _response_format(fmt: Any, sp: dict[str, Any], backend: Any) -> None:
    """``response_format`` → the ``json_schema`` sampling parameter. ``strict: true`` asks for
    exact enforcement: a schema with keywords the grammar backend cannot enforce is a 400 now
    (each keyword named with its JSON pointer), never a best-effort output."""
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return
    if kind not in ("json_object", "json_schema"):
        raise OpenAIRequestError(
            "response_format must be {type: text | json_object | json_schema}", "response_format"
        )
    if any(sp.get(k) for k in ("regex", "json_schema", "ebnf")):
        raise OpenAIRequestError(
            "pass either response_format or one of regex/json_schema/ebnf", "response_format"
        )
    if kind == "json_object":
        sp["json_schema"] = json.dumps({"type": "object"})
        return
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise OpenAIRequestError(
            "response_format.json_schema.schema must be a JSON schema object", "response_format"
        )
    sp["json_schema"] = json.dumps(schema)
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise OpenAIRequestError(
            "response_format.json_schema.strict must be true or false", "response_format"
        )
    if strict:
        try:
            backend.check_strict_schema(sp["json_schema"])
        except RequestError as e:
            raise OpenAIRequestError(str(e), "response_format") from e
