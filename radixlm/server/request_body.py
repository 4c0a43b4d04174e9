"""Request bodies: a size limit and a read deadline on every route, and parsing as JSON with
the checks every route shares.

:class:`BodyLimitMiddleware` refuses a body over ``--max-request-bytes`` with a 413: at once
from its ``Content-Length``, or (chunked uploads) as soon as the bytes read pass the limit, so
an oversized body is never held whole in memory. A body not complete ``--read-timeout``
seconds after its headers is a 408, and the connection is closed.

Invariant: any body a client can send either parses into plain JSON values whose strings are
valid Unicode (so they encode to UTF-8 wherever they go next: the tokenizer, the logs, the
response), or raises a :class:`RequestError` that names the problem. Bytes that are not UTF-8,
JSON nested deeper than the parser's limit, and lone UTF-16 surrogates (``"\\ud800"``: valid
JSON, but no character) are 400s, never an exception deeper in the server.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from fastapi.responses import JSONResponse

from radixlm.errors import RequestError


class BodyTooLargeError(RequestError):
    """A request body over ``--max-request-bytes``."""

    http_status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the request body is larger than this server accepts ({limit} bytes, "
            "--max-request-bytes); send a shorter prompt"
        )


class BodyReadTimeout(RequestError):
    """The client did not send the whole body within ``--read-timeout`` seconds."""

    http_status = 408

    def __init__(self, timeout: float) -> None:
        super().__init__(
            f"the request body did not arrive within {timeout:g} s (--read-timeout); send it "
            "whole, without pauses"
        )


class BodyLimitMiddleware:
    """Pure ASGI (not Starlette's BaseHTTPMiddleware, which hides client disconnects from the
    routes): a declared ``Content-Length`` over the limit is answered 413 before anything is
    read; a body without one raises :class:`BodyTooLargeError` from ``receive`` once it passes
    the limit, and a body still incomplete at the deadline raises :class:`BodyReadTimeout`;
    the routes answer both like any request error. Once the body is complete, ``receive``
    (which then only reports the client leaving) has no deadline."""

    def __init__(self, app: Any, max_bytes: int, read_timeout: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        encoding = headers.get(b"content-encoding", b"identity").strip().lower()
        if encoding != b"identity":
            await self._drain(receive, 0)
            message = (
                f"request bodies must not be compressed (Content-Encoding: "
                f"{encoding.decode(errors='replace')}); send plain JSON"
            )
            body = {"error": {"message": message, "type": "invalid_request_error",
                              "param": None, "code": 415}}  # fmt: skip
            await JSONResponse(body, status_code=415)(scope, receive, send)
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._drain(receive, 0)
            err = BodyTooLargeError(self.max_bytes)
            body = {"error": {"message": str(err), "type": "invalid_request_error",
                              "param": None, "code": 413}}  # fmt: skip
            await JSONResponse(body, status_code=413)(scope, receive, send)
            return
        seen = 0
        complete = timed_out = False
        deadline = time.monotonic() + self.read_timeout

        async def limited_receive() -> dict:
            nonlocal seen, complete, timed_out
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except TimeoutError:
                timed_out = True
                raise BodyReadTimeout(self.read_timeout) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body")
                if seen > self.max_bytes:
                    if message.get("more_body"):
                        await self._drain(receive, seen)
                    raise BodyTooLargeError(self.max_bytes)
            return message

        async def closing_send(message: dict) -> None:
            # After a timed-out body, close the connection once answered: the unread rest of
            # the body would otherwise be parsed as the next request.
            if timed_out and message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"connection", b"close")]}  # fmt: skip
            await send(message)

        await self.app(scope, limited_receive, closing_send)

    async def _drain(self, receive: Any, seen: int) -> None:
        """Read and drop the rest of a refused body (up to 4x the limit), so that a client
        that sends its whole body before reading the answer gets the 413 rather than a broken
        pipe; past that the connection is closed on it."""
        while seen <= 4 * self.max_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body"):
                return


# A \\u escape of a UTF-16 surrogate in the raw body: only such bodies can hold lone surrogates
# (UTF-8 cannot encode one, and json.loads joins valid pairs), so only they are walked.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_json_bytes(raw: bytes) -> Any:
    """The body as JSON values, or a RequestError saying what is wrong with it."""
    try:
        value = json.loads(raw)
    except UnicodeDecodeError as e:
        raise RequestError(
            f"the request body is not valid UTF-8: {e.reason} at byte {e.start}"
        ) from e
    except RecursionError as e:
        raise RequestError("the request body nests arrays or objects too deeply; flatten it") from e
    except ValueError as e:
        raise RequestError(f"the request body is not valid JSON: {e}") from e
    if _SURROGATE_ESCAPE.search(raw):
        where = _lone_surrogate(value, "body")
        if where is not None:
            raise RequestError(
                f"{where} holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its "
                "pair), which is not a character; send valid Unicode"
            )
    return value


def _lone_surrogate(value: Any, path: str) -> str | None:
    """The path of the first string (or key) in ``value`` that does not encode to UTF-8."""
    stack = [(value, path)]
    while stack:
        v, p = stack.pop()
        if isinstance(v, str):
            if not _encodes(v):
                return p
        elif isinstance(v, dict):
            for k, x in v.items():
                if not _encodes(k):
                    return f"a key of {p}"
                stack.append((x, f"{p}.{k}" if p != "body" else k))
        elif isinstance(v, list):
            stack.extend((x, f"{p}[{i}]") for i, x in enumerate(v))
    return None


def _encodes(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
