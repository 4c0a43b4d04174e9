"""The request side of tool calling: ``tools``, ``tool_choice``, ``parallel_tool_calls`` (and the
legacy ``functions`` / ``function_call``), validated into a :class:`ToolRequest`, plus the tool
parts of a chat history (assistant ``tool_calls``, ``tool`` messages).

Invariants: every problem is a :class:`ToolSpecError` naming the OpenAI field (``param``) and
saying what to fix; a :class:`ToolRequest` holds only what was validated (unique names, object
``parameters`` schemas); history ``tool_calls`` come out with ``arguments`` as a mapping, the
shape Hugging Face chat templates index into (OpenAI clients send a JSON string).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from radixlm.errors import RequestError

_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")  # OpenAI's function name rule
CHOICE_MODES = ("none", "auto", "required", "named")


class ToolSpecError(RequestError):
    """A 400 about a tool field; ``param`` is the OpenAI field to fix."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Tool:
    name: str
    description: str | None
    parameters: dict[str, Any]  # a JSON schema of an object (``{"type": "object"}`` if absent)

    def as_openai(self) -> dict[str, Any]:
        """The ``{"type": "function", "function": {...}}`` form templates receive as ``tools``."""
        fn: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            fn["description"] = self.description
        fn["parameters"] = self.parameters
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class ToolRequest:
    """Validated tools of one chat request. ``mode`` is one of :data:`CHOICE_MODES`; ``name``
    is the forced function for ``named``; ``parallel`` allows more than one call."""

    tools: tuple[Tool, ...]
    mode: str
    name: str | None = None
    parallel: bool = True
    legacy: bool = False  # asked with functions/function_call: answer with function_call
    by_name: dict[str, Tool] = field(default_factory=dict, compare=False)

    @property
    def active(self) -> bool:
        """True when the model may call a tool (tools given and the choice is not ``none``)."""
        return bool(self.tools) and self.mode != "none"

    def allowed(self) -> tuple[Tool, ...]:
        """The tools a call may name: the forced one for ``named``, else all."""
        return (self.by_name[self.name],) if self.mode == "named" else self.tools


def parse_tool_request(body: dict[str, Any]) -> ToolRequest | None:
    """The request's tools, or None when it has none (and no tool choice asking for one)."""
    tools_raw, choice_raw = body.get("tools"), body.get("tool_choice")
    legacy = False
    if body.get("functions") is not None or body.get("function_call") is not None:
        if tools_raw is not None or choice_raw is not None:
            raise ToolSpecError(
                "send either tools/tool_choice or the legacy functions/function_call", "functions"
            )
        legacy = True
        fns = body.get("functions")
        if fns is not None and not isinstance(fns, list):
            raise ToolSpecError("functions must be a list of function objects", "functions")
        tools_raw = None if fns is None else [{"type": "function", "function": f} for f in fns]
        choice_raw = _legacy_choice(body.get("function_call"))
    param = "functions" if legacy else "tools"
    tools = _parse_tools(tools_raw, param)
    by_name = {t.name: t for t in tools}
    mode, name = _parse_choice(choice_raw, by_name, "function_call" if legacy else "tool_choice")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise ToolSpecError("parallel_tool_calls must be true or false", "parallel_tool_calls")
    if not tools:
        if mode in ("required", "named"):
            choice_param = "function_call" if legacy else "tool_choice"
            raise ToolSpecError(
                f"{choice_param} {mode!r} needs a non-empty {param} list", choice_param
            )
        return None
    return ToolRequest(
        tools=tuple(tools),
        mode=mode,
        name=name,
        parallel=True if parallel is None else parallel,
        legacy=legacy,
        by_name=by_name,
    )


def _legacy_choice(fc: Any) -> Any:
    if fc is None or fc in ("none", "auto"):
        return fc
    if isinstance(fc, dict) and isinstance(fc.get("name"), str):
        return {"type": "function", "function": {"name": fc["name"]}}
    raise ToolSpecError('function_call must be "none", "auto" or {"name": ...}', "function_call")


def _parse_tools(raw: Any, param: str) -> list[Tool]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ToolSpecError(f"{param} must be a list of tool objects", param)
    tools: list[Tool] = []
    seen: set[str] = set()
    for i, t in enumerate(raw):
        where = f"{param}[{i}]"
        if not isinstance(t, dict) or t.get("type") != "function":
            raise ToolSpecError(
                f'{where} must be {{"type": "function", "function": {{"name": ...}}}} '
                "(function tools are the only kind)",
                param,
            )
        fn = t.get("function")
        if not isinstance(fn, dict):
            raise ToolSpecError(f"{where}.function must be an object with a name", param)
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ToolSpecError(
                f"{where}.function.name must be 1-64 letters, digits, '_', '.' or '-', "
                f"got {name!r}",
                param,
            )
        if name in seen:
            raise ToolSpecError(f"{where}: a second tool named {name!r}", param)
        seen.add(name)
        desc = fn.get("description")
        if desc is not None and not isinstance(desc, str):
            raise ToolSpecError(f"{where}.function.description must be a string", param)
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise ToolSpecError(
                f"{where}.function.parameters must be a JSON schema of an object", param
            )
        strict = fn.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise ToolSpecError(f"{where}.function.strict must be true or false", param)
        tools.append(Tool(name, desc, params))
    return tools


def _parse_choice(raw: Any, by_name: dict[str, Tool], param: str) -> tuple[str, str | None]:
    if raw is None:
        return ("auto" if by_name else "none"), None
    if raw in ("none", "auto", "required"):
        return raw, None
    if isinstance(raw, dict) and raw.get("type") == "function":
        fn = raw.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str):
            raise ToolSpecError(f"{param}.function.name must be a string", param)
        if name not in by_name:
            raise ToolSpecError(
                f"{param} names {name!r}, which is not among the tools "
                f"({', '.join(by_name) or 'none given'})",
                param,
            )
        return "named", name
    raise ToolSpecError(
        f'{param} must be "none", "auto", "required" or '
        '{"type": "function", "function": {"name": ...}}',
        param,
    )


# ---- history ---------------------------------------------------------------------------------
def history_tool_calls(raw: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls`` (or legacy ``function_call``), validated, with
    ``arguments`` parsed into a mapping for the template."""
    calls = raw if isinstance(raw, list) else None
    if not calls:
        raise RequestError(f"{where}.tool_calls must be a list of tool calls")
    out = []
    for j, c in enumerate(calls):
        w = f"{where}.tool_calls[{j}]"
        if not isinstance(c, dict) or c.get("type", "function") != "function":
            raise RequestError(f'{w} must be {{"id", "type": "function", "function": {{...}}}}')
        fn = c.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise RequestError(f"{w}.function must be an object with a string name")
        call_id = c.get("id")
        if call_id is not None and not isinstance(call_id, str):
            raise RequestError(f"{w}.id must be a string")
        item: dict[str, Any] = {"type": "function", "function": {"name": fn["name"]}}
        item["function"]["arguments"] = _arguments(fn.get("arguments"), f"{w}.function.arguments")
        if call_id is not None:
            item["id"] = call_id
        out.append(item)
    return out


def _arguments(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw) if raw.strip() else {}
        except ValueError as e:
            raise RequestError(f"{where} must be a JSON object (as a string): {e}") from e
        if isinstance(value, dict):
            return value
    raise RequestError(f"{where} must be a JSON object or a string holding one")
