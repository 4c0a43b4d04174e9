"""The generation routes' OpenAPI documentation, from the models of ``server/api_models.py`` and
``server/api_responses.py``.

The routes read their bodies by hand (``Request``), so FastAPI derives no schema for them: each
route's decorator takes :func:`request_body` (``openapi_extra``) and :func:`responses`
(``responses``), which refer to ``#/components/schemas/<Model>``, and :func:`install` makes the
app's ``/openapi.json`` carry those components.

Invariants: every component comes from one pydantic generation (:func:`component_schemas`:
requests in validation mode, responses in serialization mode), so one name is one schema;
:func:`install` refuses a name FastAPI already uses for a different schema rather than
overwriting it. Routes that use these helpers must be served by an app passed to
:func:`install`, or their references dangle.
"""

from __future__ import annotations

import functools
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from radixlm.server import api_models as m
from radixlm.server import api_responses as r

REF = "#/components/schemas/{model}"
_REQUESTS = [m.GenerateRequest, m.CompletionRequest, m.ChatCompletionRequest]
_RESPONSES = [
    r.GenerateResponse, r.GenerateChunk, r.ErrorResponse, r.CompletionResponse,
    r.CompletionChunk, r.ChatCompletionResponse, r.ChatCompletionChunk, r.OpenAIErrorResponse,
]  # fmt: skip
SSE_NOTE = (
    "Server-sent events (with `stream: true`): each `data:` line holds one JSON object of this "
    "schema; the stream ends with `data: [DONE]`. An error after the stream started is an "
    "error object as the last event before `[DONE]`."
)


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


@functools.cache
def component_schemas() -> dict[str, dict[str, Any]]:
    """Every model's JSON schema (and those of the models it uses) by component name."""
    models = [(x, "validation") for x in _REQUESTS] + [(x, "serialization") for x in _RESPONSES]
    keys, defs = models_json_schema(models, ref_template=REF)
    names = {ref_["$ref"].rsplit("/", 1)[1] for ref_ in keys.values()}
    expected = {x.__name__ for x in _REQUESTS + _RESPONSES}
    if names != expected:  # a model used in both modes with two schemas gets a suffixed name
        raise RuntimeError(f"API models named {sorted(names - expected)} in the schema")
    return defs["$defs"]


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose JSON body is ``model``."""
    content = {"application/json": {"schema": ref(model)}}
    return {"requestBody": {"required": True, "content": content}}


def responses(
    result: dict[str, Any],
    chunk: type[BaseModel],
    error: type[BaseModel],
    description: str,
    errors: dict[int, str],
) -> dict[int | str, dict[str, Any]]:
    """``responses`` for a generation route: ``result`` (a schema) as JSON, ``chunk`` events
    (or ``error``) as ``text/event-stream``, and ``error`` for each status in ``errors``."""
    events = {"anyOf": [ref(chunk), ref(error)], "description": SSE_NOTE}
    ok: dict[str, Any] = {
        "description": description,
        "content": {
            "application/json": {"schema": result},
            "text/event-stream": {"schema": events},
        },
    }
    out: dict[int | str, dict[str, Any]] = {200: ok}
    for status, text in errors.items():
        out[status] = {"description": text, "content": {"application/json": {"schema": ref(error)}}}
    return out


NATIVE_ERRORS = {
    400: "Bad request: the message names the field and what to fix",
    413: "The body is larger than --max-request-bytes",
    503: "The server is starting, shutting down, or its scheduler died",
}
OPENAI_ERRORS = {**NATIVE_ERRORS, 404: "The model is not served here (param: model)"}


def _docs(
    request: type[BaseModel], result: dict[str, Any], chunk: type[BaseModel], description: str
) -> dict[str, Any]:
    native = request is m.GenerateRequest
    error = r.ErrorResponse if native else r.OpenAIErrorResponse
    errors = NATIVE_ERRORS if native else OPENAI_ERRORS
    return {
        "openapi_extra": request_body(request),
        "responses": responses(result, chunk, error, description, errors),
    }


def generate_docs() -> dict[str, Any]:
    """Decorator arguments of ``/generate``."""
    batch = {"type": "array", "items": ref(r.GenerateResponse)}
    one_or_batch = {"anyOf": [ref(r.GenerateResponse), batch]}
    text = "The result; a list of results (prompt-major) for a batch or n > 1"
    return _docs(m.GenerateRequest, one_or_batch, r.GenerateChunk, text)


def completions_docs() -> dict[str, Any]:
    """Decorator arguments of ``/v1/completions``."""
    result = ref(r.CompletionResponse)
    return _docs(m.CompletionRequest, result, r.CompletionChunk, "The completion")


def chat_completions_docs() -> dict[str, Any]:
    """Decorator arguments of ``/v1/chat/completions``."""
    result = ref(r.ChatCompletionResponse)
    return _docs(m.ChatCompletionRequest, result, r.ChatCompletionChunk, "The chat completion")


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` (``/openapi.json``) include :func:`component_schemas`."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        doc = build()  # FastAPI's, cached on the app after the first call
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for name, schema in component_schemas().items():
            if schemas.setdefault(name, schema) != schema:
                raise RuntimeError(f"two OpenAPI schemas named {name!r}")
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
