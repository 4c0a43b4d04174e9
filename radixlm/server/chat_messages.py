"""Chat messages as OpenAI clients send them, validated into what chat templates render.

Roles ``system`` / ``developer`` (= system), ``user``, ``assistant``, ``tool`` (the legacy
``function`` role = tool). Content is a string or a list of ``{"type": "text"}`` parts, joined
with ``"\\n"``; an assistant message may carry ``tool_calls`` (its content then may be null; an
empty list means none) or a legacy ``function_call``; a tool message its ``tool_call_id`` and
``name``. Every problem raises :class:`RequestError` naming the message and field. Call
``arguments`` come out as mappings, the shape Hugging Face templates index into.
"""

from __future__ import annotations

from typing import Any

from radixlm.errors import RequestError
from radixlm.function_call.tools import history_tool_calls

ROLES = ("system", "user", "assistant", "tool")
# OpenAI's newer name for the system role; the legacy function-result role
_ROLE_ALIASES = {"developer": "system", "function": "tool"}


def normalize_messages(messages: Any) -> list[dict[str, Any]]:
    """Validate OpenAI-style messages; return ``[{"role", "content", ...}]`` with string content
    (assistant ``tool_calls`` and tool ``tool_call_id`` / ``name`` kept, validated)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(f"{where} must be an object with role and content")
        role = m.get("role")
        if not isinstance(role, str):
            raise RequestError(f"{where}.role must be a string such as 'user', got {role!r}")
        legacy_function = role == "function"
        role = _ROLE_ALIASES.get(role, role)
        if role not in ROLES:
            raise RequestError(
                f"{where}.role must be one of system, developer, user, assistant, tool; "
                f"got {role!r}"
            )
        if m.get("name") is not None and not isinstance(m["name"], str):
            raise RequestError(f"{where}.name must be a string, got {m['name']!r}")
        calls = m.get("tool_calls")
        if isinstance(calls, list) and not calls:
            calls = None  # some clients send an empty list for "no calls"
        if m.get("function_call") is not None:  # legacy: one call, no id
            if calls is not None:
                raise RequestError(f"{where}: send tool_calls or function_call, not both")
            calls = [{"type": "function", "function": m["function_call"]}]
        content = m.get("content")
        if content is None and role == "assistant":
            content = ""
        msg: dict[str, Any] = {"role": role, "content": _content_text(content, where)}
        if calls is not None:
            if role != "assistant":
                raise RequestError(f"{where}: only assistant messages carry tool_calls")
            msg["tool_calls"] = history_tool_calls(calls, where)
        if role == "tool":
            call_id, name = m.get("tool_call_id"), m.get("name")
            if not legacy_function and not isinstance(call_id, str):
                raise RequestError(f"{where}.tool_call_id must be the id of the call it answers")
            if call_id is not None:
                msg["tool_call_id"] = call_id
            if name is not None:
                msg["name"] = name
        out.append(msg)
    return out


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(
            f"{where}.content must be a string or a list of text parts, got "
            f"{type(content).__name__}"
        )
    texts, other = [], []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise RequestError(f"{where}.content[{j}] must be an object like {{type, text}}")
        kind = part.get("type")
        if kind != "text":
            other.append(kind)
        elif not isinstance(part.get("text"), str):
            raise RequestError(f"{where}.content[{j}].text must be a string")
        else:
            texts.append(part["text"])
    if other:
        raise RequestError(
            f"{where}.content has part type(s) {sorted(set(map(str, other)))}; only 'text' "
            "parts are supported (this server serves text-only models)"
        )
    return "\n".join(texts)
