"""OpenAI-compatible HTTP routes (``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``).

A FastAPI router over any :class:`GenerateBackend` (the server's tokenizer manager, or a fake in
tests). Bodies are parsed and validated by ``openai_protocol`` (never FastAPI's 422), answers
are built by ``openai_results``: every error is a JSON ``{"error": {message, type, param, code}}``
with the status of the :class:`~radixlm.errors.RadixLMError` behind it.

Invariant: the backend's async iterator is always closed (``aclose``) when a response ends, the
client disconnects, or an error occurs — closing aborts the unfinished requests in the engine.
Disconnects are watched while waiting for results, not only when sending, so a request still
queued is aborted as soon as its client goes away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from radixlm.errors import RadixLMError
from radixlm.server import openapi
from radixlm.server.auth import tenant_of
from radixlm.server.chat_template import ChatTemplate
from radixlm.server.http_util import (
    SSE_DONE,
    ClientDisconnected,
    EventStream,
    close_quietly,
    next_unless_disconnected,
    sse,
)
from radixlm.server.openai_errors import error_body, parse_json_body
from radixlm.server.openai_protocol import (
    OpenAICall,
    parse_chat_request,
    parse_completion_request,
)
from radixlm.server.openai_results import StreamState, build_response

logger = logging.getLogger(__name__)

IGNORED_FIELDS_HEADER = "X-Ignored-Fields"  # request fields this server did not act on

# Bodies larger than this are parsed, rendered and tokenized off the event loop.
OFF_LOOP_BYTES = 262_144


class GenerateBackend(Protocol):
    """What the routes need from the server (implemented by the tokenizer manager)."""

    served_model_name: str  # the reported name
    model_names: list[str]  # every served name (aliases), the reported one first
    tokenizer: Any | None
    context_length: int
    chat_template: ChatTemplate
    tool_format: Any  # the server's ToolCallFormat, or None (requests with tools are refused)
    reasoning: Any  # the server's ReasoningSetup (--reasoning-parser), or None

    def check_strict_schema(self, schema: str) -> None:
        """Raise a RequestError naming what the grammar backend cannot enforce exactly."""
        ...

    def check_model(self, model: Any) -> None:
        """Raise a 404 RequestError for a ``model`` (None: absent) this server does not serve."""
        ...

    def generate(
        self, obj: dict[str, Any], tenant: str | None = None
    ) -> AsyncIterator[dict | list[dict]]:
        """Native ``/generate``: raises RadixLMError before the first item on bad input; closing
        the iterator early aborts the unfinished requests. ``tenant``: the API key's tenant."""
        ...


def create_openai_router(get_backend: Callable[[], GenerateBackend]) -> APIRouter:
    """Routes under ``/v1``; ``get_backend`` is called per request (it may raise RadixLMError,
    e.g. a CapacityError while the server is starting)."""
    router = APIRouter()
    created = int(time.time())

    @router.get("/v1/models")
    async def list_models() -> Response:
        try:
            backend = get_backend()
        except RadixLMError as e:
            return error_response(e)
        cards = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "radixlm",
                "root": backend.served_model_name,
                "max_model_len": backend.context_length,
            }
            for name in backend.model_names
        ]
        return JSONResponse({"object": "list", "data": cards})

    @router.post("/v1/completions", **openapi.completions_docs())
    async def completions(request: Request) -> Response:
        return await _handle(request, get_backend, parse_completion_request)

    @router.post("/v1/chat/completions", **openapi.chat_completions_docs())
    async def chat_completions(request: Request) -> Response:
        return await _handle(request, get_backend, parse_chat_request)

    return router


def error_response(e: Exception) -> JSONResponse:
    status, body = error_body(e)
    if status >= 500:
        logger.warning("OpenAI request failed (%d): %s", status, body["error"]["message"])
    return JSONResponse(body, status_code=status)


async def _handle(
    request: Request,
    get_backend: Callable[[], GenerateBackend],
    parse: Callable[[dict[str, Any], Any], OpenAICall],
) -> Response:
    it: AsyncIterator[Any] | None = None
    streaming = False
    try:
        backend = get_backend()
        raw = await request.body()
        if len(raw) > OFF_LOOP_BYTES:  # a long prompt is rendered and tokenized in a thread
            call = await asyncio.to_thread(lambda: parse(parse_json_body(raw), backend))
        else:
            call = parse(parse_json_body(raw), backend)
        headers = {}
        if call.ignored:
            logger.info("%s: ignored field(s) %s", request.url.path, call.ignored)
            # percent-encoded: a field name may hold any character, a header only ASCII
            # without control characters or edge spaces
            headers[IGNORED_FIELDS_HEADER] = ", ".join(quote(k, safe="") for k in call.ignored)
        it = backend.generate(call.native, tenant_of(request.scope))
        # The first item is awaited here so a bad request is an HTTP error, not a stream event.
        first = await next_unless_disconnected(request, it)
        if call.stream:
            streaming = True
            return EventStream(_events(call, it, first), it, headers)
        return JSONResponse(build_response(call, first), headers=headers)
    except ClientDisconnected:
        logger.debug("client disconnected before the result was ready")
        return Response(status_code=499)
    except RadixLMError as e:
        return error_response(e)
    except Exception as e:
        logger.exception("OpenAI request failed")
        return error_response(e)
    finally:
        if it is not None and not streaming:
            await close_quietly(it)


async def _events(call: OpenAICall, it: AsyncIterator[Any], first: Any) -> AsyncIterator[str]:
    """SSE events: chunks, the usage chunk, ``[DONE]``; an error becomes an error event."""
    state = StreamState(call)
    try:
        for c in state.start():
            yield sse(c)
        item = first
        while item is not None:
            for c in state.feed(item):
                yield sse(c)
            item = await anext(it, None)
        if not state.all_done:
            raise RuntimeError("the backend stream ended before every choice finished")
        if call.include_usage:
            yield sse(state.usage_chunk())
        yield SSE_DONE
    except Exception as e:
        if not isinstance(e, RadixLMError):
            logger.exception("OpenAI stream failed")
        yield sse(error_body(e)[1])
        yield SSE_DONE
    finally:
        await close_quietly(it)
