"""OpenAI error bodies: ``{"error": {message, type, param, code}}`` for any exception, the
request-body JSON check with OpenAI-shaped errors, and :class:`OpenAIRequestError`.

An internal exception's text never reaches a client (``INTERNAL_ERROR`` instead; the route logs
it). An engine-side 400 names its OpenAI field in ``param`` when its message starts with one.
"""

from __future__ import annotations

import re
from typing import Any

from radixlm.errors import RadixLMError, RequestError
from radixlm.server.openai_fields import CHAT_FIELDS, COMPLETION_FIELDS
from radixlm.server.request_body import parse_json_bytes

INTERNAL_ERROR = "internal server error; the server log has the details"


class OpenAIRequestError(RequestError):
    """A 400 whose OpenAI error body names the offending field in ``param``."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def error_body(e: Exception) -> tuple[int, dict[str, Any]]:
    """(HTTP status, ``{"error": {message, type, param, code}}``) for any exception."""
    status = e.http_status if isinstance(e, RadixLMError) else 500
    # An internal exception's text stays in the server log (the route logs it), not the reply.
    message = str(e) if isinstance(e, RadixLMError) else INTERNAL_ERROR
    kind = "invalid_request_error" if status < 500 else "server_error"
    code = getattr(e, "code", None) or status  # e.g. "model_not_found", as OpenAI sends it
    param = getattr(e, "param", None)
    if param is None and isinstance(e, RequestError):
        param = _param_named(message)
    err = {"message": message, "type": kind, "param": param, "code": code}
    return status, {"error": err}


# Native names the engine's messages use, as the OpenAI request calls them.
_OPENAI_NAME = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens",
                "input_ids": "prompt", "sampling_seed": "seed"}  # fmt: skip
_LEADING_NAME = re.compile(r"([a-z_]+)\b")


def _param_named(message: str) -> str | None:
    """The OpenAI field an engine-side message starts with (``temperature must be ...``,
    ``logit_bias key ...``, ``n=65 asks ...``), for the error body's ``param``; else None."""
    match = _LEADING_NAME.match(message)
    if match is None:
        return None
    name = _OPENAI_NAME.get(match.group(1), match.group(1))
    return name if name in COMPLETION_FIELDS | CHAT_FIELDS else None


def parse_json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = parse_json_bytes(raw)
    except RequestError as e:
        raise OpenAIRequestError(str(e)) from e
    if not isinstance(body, dict):
        raise OpenAIRequestError(
            f"the request body must be a JSON object, got {type(body).__name__}"
        )
    return body
