"""Parsing an HTTP request body as JSON, with the checks every route shares.

Invariant: any body a client can send either parses into plain JSON values whose strings are
valid Unicode (so they encode to UTF-8 wherever they go next: the tokenizer, the logs, the
response), or raises a :class:`RequestError` that names the problem. Bytes that are not UTF-8,
JSON nested deeper than the parser's limit, and lone UTF-16 surrogates (``"\\ud800"``: valid
JSON, but no character) are 400s, never an exception deeper in the server.
"""

from __future__ import annotations

import json
import re
from typing import Any

from radixlm.errors import RequestError

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
