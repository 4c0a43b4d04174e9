"""Public constructors of the DSL (``sgl.gen``, ``sgl.select``, roles, ``sgl.image``, ...) and
the backend-wide helpers (``set_default_backend``, ``flush_cache``, ``get_server_info``).

Constructors only build IR nodes; nothing here talks to a backend except the three helpers.
Every ``gen`` field left at None inherits the run-level default when the gen executes.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable
from typing import Any

from radixlm_lang.choices import token_length_normalized
from radixlm_lang.global_config import global_config
from radixlm_lang.ir import (
    SAMPLING_FIELDS,
    Expr,
    ExprList,
    Gen,
    Image,
    RoleBegin,
    RoleEnd,
    Select,
    ToolMessage,
    as_tuple,
    normalize_dtype,
    role_block,
)
from radixlm_lang.tools import make_tool_spec


def _json_schema_str(schema: Any) -> str | None:
    """A JSON-schema given as str, dict or pydantic model class → its JSON string."""
    if schema is None or isinstance(schema, str):
        return schema
    if hasattr(schema, "model_json_schema"):
        schema = schema.model_json_schema()
    return json.dumps(schema)


def gen(
    name: str | None = None,
    max_tokens: int | None = None,
    min_tokens: int | None = None,
    n: int | None = None,
    stop: str | list[str] | None = None,
    stop_token_ids: list[int] | None = None,
    stop_regex: str | list[str] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    min_p: float | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    ignore_eos: bool | None = None,
    return_logprob: bool | None = None,
    logprob_start_len: int | None = None,
    top_logprobs_num: int | None = None,
    return_text_in_logprobs: bool | None = None,
    dtype: Any = None,
    choices: list[str] | None = None,
    choices_method: Callable[..., Any] | None = None,
    regex: str | None = None,
    json_schema: Any = None,
    tools: list[dict[str, Any]] | None = None,
    tool_choice: str | dict[str, Any] | None = None,
    parallel_tool_calls: bool | None = None,
) -> Expr:
    """A generation. With ``choices`` it is a ``select`` (temperature defaults to 0).

    With ``tools`` (OpenAI tool objects ``{"type": "function", "function": {"name",
    "description", "parameters"}}``), ``tool_choice`` (``"auto"``, the default with tools;
    ``"required"``; ``"none"``; or ``{"type": "function", "function": {"name": ...}}``) and
    ``parallel_tool_calls`` (default True) the model may call tools, as on
    ``/v1/chat/completions``: the gen must be the first thing in an assistant turn, and its
    prompt is the program's ``messages`` rendered by the model's chat template with the tools.
    The variable holds the assistant text without the calls (``""`` when the output is only
    calls); ``s.tool_calls(name)`` gives the calls as OpenAI dicts (``[]`` for none; also
    ``s.get_meta_info(name)["tool_calls"]``), and the assistant message in ``s.messages()``
    carries them as ``tool_calls``. Add results with ``sgl.tool(result, tool_call_id=...)``.
    The arguments are validated now (``ValueError``)."""
    tool_spec = make_tool_spec(tools, tool_choice, parallel_tool_calls)
    if tool_spec is not None and choices is not None:
        raise ValueError("gen takes either choices or tools, not both")
    if choices is not None:
        return select(
            name,
            choices,
            0.0 if temperature is None else temperature,
            choices_method or token_length_normalized,
        )
    if regex is not None:
        try:
            re.compile(regex)
        except re.error as e:
            raise ValueError(f"invalid regex {regex!r}: {e}") from e
    fields = {
        "max_new_tokens": max_tokens,
        "min_new_tokens": min_tokens,
        "n": n,
        "stop": stop,
        "stop_token_ids": stop_token_ids,
        "stop_regex": stop_regex,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "min_p": min_p,
        "frequency_penalty": frequency_penalty,
        "presence_penalty": presence_penalty,
        "ignore_eos": ignore_eos,
        "return_logprob": return_logprob,
        "logprob_start_len": logprob_start_len,
        "top_logprobs_num": top_logprobs_num,
        "return_text_in_logprobs": return_text_in_logprobs,
        "json_schema": _json_schema_str(json_schema),
        "dtype": normalize_dtype(dtype),
        "regex": regex,
    }
    assert set(fields) == set(SAMPLING_FIELDS)
    for key in ("stop", "stop_token_ids", "stop_regex"):
        if fields[key] is not None:
            fields[key] = as_tuple(fields[key])  # the node stays immutable and hashable
    overrides = tuple((k, v) for k, v in fields.items() if v is not None)
    return Gen(name, overrides, tool_spec)


def gen_int(name: str | None = None, **kwargs: Any) -> Expr:
    return gen(name, dtype="int", **kwargs)


def gen_string(name: str | None = None, **kwargs: Any) -> Expr:
    return gen(name, dtype="str", **kwargs)


def select(
    name: str | None = None,
    choices: list[str] | None = None,
    temperature: float = 0.0,
    choices_method: Callable[..., Any] = token_length_normalized,
) -> Select:
    if not choices:
        raise ValueError("select needs a non-empty list of choices")
    return Select(name, tuple(choices), temperature, choices_method)


def image(source: str | os.PathLike | bytes | Any) -> Image:
    """An image from a file path, raw bytes, or a PIL image; the file is read and base64-encoded
    now. The backend decides whether it can send images (natively: at most one per request)."""
    if isinstance(source, bytes):
        data = source
    elif isinstance(source, str | os.PathLike):
        with open(source, "rb") as f:
            data = f.read()
    elif hasattr(source, "save"):
        import io

        buf = io.BytesIO()
        source.save(buf, format="PNG")
        data = buf.getvalue()
    else:
        raise TypeError(f"cannot make an image from {type(source).__name__}")
    return Image(base64.b64encode(data).decode("ascii"), _image_mime(data))


_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def _image_mime(data: bytes) -> str:
    """The image's MIME type from its magic number (JPEG when unrecognised)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in _IMAGE_MAGIC if data.startswith(magic)), "image/jpeg")


def system(expr: Expr | str | None = None) -> ExprList:
    return role_block("system", expr)


def user(expr: Expr | str | None = None) -> ExprList:
    return role_block("user", expr)


def assistant(expr: Expr | str | None = None) -> ExprList:
    return role_block("assistant", expr)


def tool(content: Any, tool_call_id: str | None = None, name: str | None = None) -> ToolMessage:
    """A ``tool`` message: the result of the call ``tool_call_id`` (the ``id`` of one of
    ``s.tool_calls(var)``). ``content`` is a str; anything else is sent as its JSON."""
    if not isinstance(content, str):
        content = json.dumps(content, ensure_ascii=False)
    return ToolMessage(content, tool_call_id, name)


def system_begin() -> RoleBegin:
    return RoleBegin("system")


def system_end() -> RoleEnd:
    return RoleEnd("system")


def user_begin() -> RoleBegin:
    return RoleBegin("user")


def user_end() -> RoleEnd:
    return RoleEnd("user")


def assistant_begin() -> RoleBegin:
    return RoleBegin("assistant")


def assistant_end() -> RoleEnd:
    return RoleEnd("assistant")


def _unwrap(backend: Any) -> Any:
    """A ``Runtime`` (anything with ``.endpoint``) → its endpoint backend."""
    return getattr(backend, "endpoint", backend)


def set_default_backend(backend: Any) -> None:
    global_config.default_backend = _unwrap(backend)


def resolve_backend(backend: Any = None) -> Any:
    backend = _unwrap(backend) if backend is not None else global_config.default_backend
    if backend is None:
        raise ValueError("no backend: call sgl.set_default_backend(...) or pass backend=")
    return backend


def flush_cache(backend: Any = None) -> bool:
    return resolve_backend(backend).flush_cache()


def get_server_info(backend: Any = None) -> dict[str, Any]:
    return resolve_backend(backend).get_server_info()
