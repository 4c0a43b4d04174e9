"""Lark literals for the call grammars: a string as text, or as the one special token it is.

A tool-call trigger such as Qwen's ``<tool_call>`` is a single special token of its tokenizer; a
grammar must then name that token (``<[id]>``), because the model was trained to emit the token,
not the string spelled in ordinary pieces (and llguidance does not match special tokens inside
text). Every other string is a JSON string literal, which is also a valid Lark literal.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

# Lark literal of `text` for llguidance (a JSON string literal is a valid Lark string).
Literal = Callable[[str], str]


def json_literal(text: str) -> str:
    return json.dumps(text)


def is_token_literal(lark: str) -> bool:
    """True for a Lark literal that names one token (``<[id]>``), not text."""
    return lark.startswith("<[")


def special_token_id(text: str, tokenizer: Any) -> int | None:
    """The id of ``text`` when it is one special (or added) token of ``tokenizer``, else None."""
    if tokenizer is None or not text:
        return None
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        return None
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    if hasattr(tokenizer, "get_added_vocab"):
        special.update(tokenizer.get_added_vocab().values())
    return ids[0] if ids[0] in special else None


def token_literal(tokenizer: Any) -> Literal:
    """A :data:`Literal` that writes a string which is one special token of ``tokenizer`` as
    that token (``<[id]>``: the model must emit the token itself, as it was trained to, not
    its spelling in ordinary pieces) and any other string as text."""

    def literal(text: str) -> str:
        tid = special_token_id(text, tokenizer)
        return json_literal(text) if tid is None else f"<[{tid}]>"

    return literal
