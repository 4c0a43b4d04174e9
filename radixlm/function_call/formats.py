"""Tool-call formats (``--tool-call-parser``): how a model family writes calls, both ways.

Each :class:`ToolCallFormat` turns model text into OpenAI tool calls (:meth:`parse`) and writes
the grammar that makes a model emit well-formed calls in that same format (:meth:`grammar`, a
Lark grammar for llguidance with each call's arguments as an inline JSON schema).

- ``hermes`` (Hermes, Qwen2.5, Qwen3): ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``,
  one block per call, free text before.
- ``llama3_json`` (Llama 3.1-3.3 JSON tool calling): ``{"name": ..., "parameters": {...}}``,
  optionally after ``<|python_tag|>``, several separated by ``; ``; a call is the whole output.
- ``mistral`` (Mistral v0.3 and later): ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``
  after optional free text (the ``[TOOL_CALLS]name[ARGS]{...}`` form of newer models parses too).

Invariant: :meth:`parse` never raises. Text that does not hold well-formed calls (bad JSON, a
call without a name, a block left open) is returned whole as ``content`` with no calls, so a
malformed output is visible to the client and never a 500.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from radixlm.function_call.literals import Literal, is_token_literal, json_literal, special_token_id
from radixlm.function_call.tools import Tool, ToolRequest


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text of an object
    id: str

    def as_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class ParsedOutput:
    content: str | None  # None when the output is only calls
    calls: tuple[ToolCall, ...]


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _call(obj: Any, args_keys: tuple[str, ...]) -> ToolCall | None:
    """A ToolCall from a decoded ``{"name", <args key>}`` object, or None if it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args: Any = {}
    for key in args_keys:
        if key in obj:
            args = obj[key]
            break
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False), new_call_id())


def _content(text: str) -> str | None:
    text = text.strip()
    return text or None


class ToolCallFormat:
    name: str = ""
    #: The text that opens the first call (where a lazy grammar would start); also held back
    #: while streaming until it is clear whether a call starts.
    trigger: str = ""
    #: The key of a call object that holds the arguments.
    args_key: str = "arguments"
    #: True when a call is the whole output (no trigger needed: output starting with ``{`` is
    #: a call), so streamed text is held until its first character decides.
    whole_output: bool = False

    def parse(self, text: str) -> ParsedOutput:
        raise NotImplementedError

    def grammar(self, req: ToolRequest, literal: Literal = json_literal) -> str:
        """A Lark (llguidance) grammar of the outputs ``req`` allows.

        ``required`` / ``named``: every sentence is one call (``req.parallel``: one or more)
        to one of ``req.allowed()``, arguments valid for that tool's schema. ``auto``: free
        text, or free text up to the trigger and from there well-formed calls as above (a lazy
        grammar: nothing is constrained until the model starts a call)."""
        calls = self._calls_grammar(req, literal)
        if req.mode != "auto":
            return _grammar("start: calls", *calls)
        return _grammar(*self._auto_rules(literal), *calls)

    def _calls_grammar(self, req: ToolRequest, literal: Literal) -> list[str]:
        """Rules defining ``calls``: the trigger, then one call (parallel: one or more)."""
        raise NotImplementedError

    def _auto_rules(self, literal: Literal) -> list[str]:
        """``start``: free text, or free text then ``calls`` (which begins with the trigger).
        The text before a trigger that is a special token cannot hold special tokens, so the
        trigger token ends it; a text trigger ends the lazy ``lead`` lexeme (the first place
        the trigger's text appears)."""
        trig = literal(self.trigger)
        if is_token_literal(trig):
            return ["start: TEXT | TEXT calls", "TEXT: /(?s:.*)/"]
        return [
            "start: TEXT | lead calls_after_trigger",
            "TEXT: /(?s:.*)/",
            f"lead[lazy]: TEXT {trig}",
        ]

    def closed_end(self, text: str) -> int:
        """End of the last complete call in a partial output, 0 if none (streaming sends the
        calls before it early)."""
        return 0

    def call_schema(self, tools: tuple[Tool, ...]) -> dict[str, Any]:
        """JSON schema of one call object: ``{"name": <const>, <args_key>: <parameters>}``."""
        options = []
        for i, t in enumerate(tools):
            params = _rebase_refs(t.parameters, f"#/anyOf/{i}/properties/{self.args_key}")
            options.append(
                {
                    "type": "object",
                    "properties": {"name": {"const": t.name}, self.args_key: params},
                    "required": ["name", self.args_key],
                    "additionalProperties": False,
                }
            )
        return {"anyOf": options}


def _rebase_refs(schema: Any, base: str) -> Any:
    """``schema`` with every local ``$ref`` (``#...``) made relative to ``base``: the tool's
    parameters are nested inside the call schema, so their ``#/$defs/...`` move with them."""
    if isinstance(schema, dict):
        out = {}
        for k, v in schema.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#"):
                out[k] = base + v[1:]
            else:
                out[k] = _rebase_refs(v, base)
        return out
    if isinstance(schema, list):
        return [_rebase_refs(x, base) for x in schema]
    return schema


# The layout of generated call JSON: Python's json.dumps default (what chat templates render
# history calls with, via ``tojson``), no other whitespace: a call cannot be padded out to
# the token limit with spaces and newlines.
_JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _json_rule(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": _JSON_LAYOUT}, ensure_ascii=False)


def _grammar(*rules: str) -> str:
    return "\n".join(["%llguidance {}", *rules]) + "\n"


def _repeated_calls(
    req: ToolRequest, trigger: str, call_rest: str, sep: str, *rules: str
) -> list[str]:
    """Rules for ``calls``: ``trigger call_rest`` (``req.parallel``: one or more, separated by
    ``sep``), and ``calls_after_trigger``, the same once the first trigger is written."""
    more = " (sep call)*" if req.parallel else ""
    return [
        "calls: call" + more,
        "calls_after_trigger: call_rest" + more,
        f"call: {trigger} call_rest" if trigger else "call: call_rest",
        f"call_rest: {call_rest}",
        f"sep: {sep}",
        *rules,
    ]


class HermesFormat(ToolCallFormat):
    name = "hermes"
    trigger = "<tool_call>"
    _BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)

    def parse(self, text: str) -> ParsedOutput:
        start = text.find(self.trigger)
        if start == -1:
            return ParsedOutput(_content(text), ())
        calls, pos, outside = [], 0, []
        for m in self._BLOCK.finditer(text):
            outside.append(text[pos : m.start()])
            try:
                call = _call(json.loads(m.group(1)), ("arguments", "parameters"))
            except ValueError:
                call = None
            if call is None:
                return ParsedOutput(_content(text), ())
            calls.append(call)
            pos = m.end()
        rest = text[pos:]
        if self.trigger in rest or not calls:  # a block left open, or none closed
            return ParsedOutput(_content(text), ())
        outside.append(rest)
        return ParsedOutput(_content("".join(outside)), tuple(calls))

    def closed_end(self, text: str) -> int:
        i = text.rfind("</tool_call>")
        return 0 if i == -1 else i + len("</tool_call>")

    def _calls_grammar(self, req: ToolRequest, literal: Literal) -> list[str]:
        return _repeated_calls(
            req,
            literal(self.trigger),
            f'"\\n" body "\\n" {literal("</tool_call>")}',
            '"\\n"',
            "body: " + _json_rule(self.call_schema(req.allowed())),
        )


class Llama3JsonFormat(ToolCallFormat):
    name = "llama3_json"
    trigger = "<|python_tag|>"
    args_key = "parameters"
    whole_output = True

    def parse(self, text: str) -> ParsedOutput:
        body = text.strip()
        if body.startswith(self.trigger):
            body = body[len(self.trigger) :].lstrip()
        if not body.startswith("{"):
            return ParsedOutput(_content(text), ())
        decoder = json.JSONDecoder()
        calls, pos = [], 0
        while pos < len(body):
            try:
                obj, end = decoder.raw_decode(body, pos)
            except ValueError:
                return ParsedOutput(_content(text), ())
            call = _call(obj, ("parameters", "arguments"))
            if call is None:
                return ParsedOutput(_content(text), ())
            calls.append(call)
            pos = end
            while pos < len(body) and body[pos] in " \n\t;":
                pos += 1
        return ParsedOutput(None, tuple(calls))

    def _calls_grammar(self, req: ToolRequest, literal: Literal) -> list[str]:
        return _repeated_calls(
            req, "", "body", '"; "', "body: " + _json_rule(self.call_schema(req.allowed()))
        )

    def _auto_rules(self, literal: Literal) -> list[str]:
        """A call is the whole output, so text may not start with ``{`` (nor, when the
        ``<|python_tag|>`` prefix is text, with ``<|``); a call may follow the prefix."""
        tag = literal(self.trigger)
        text = "/[^{](?s:.*)/" if is_token_literal(tag) else "/([^{<]|<[^|])(?s:.*)/"
        return [f"start: TEXT | {tag}? calls", f"TEXT: {text} | /\\s*/"]


class MistralFormat(ToolCallFormat):
    name = "mistral"
    trigger = "[TOOL_CALLS]"
    _ARGS = "[ARGS]"

    def parse(self, text: str) -> ParsedOutput:
        start = text.find(self.trigger)
        if start == -1:
            return ParsedOutput(_content(text), ())
        before, rest = text[:start], text[start + len(self.trigger) :].strip()
        calls = self._json_calls(rest) if rest.startswith(("[", "{")) else self._args_calls(rest)
        if not calls:
            return ParsedOutput(_content(text), ())
        return ParsedOutput(_content(before), tuple(calls))

    @staticmethod
    def _json_calls(rest: str) -> list[ToolCall]:
        try:
            value = json.loads(rest)
        except ValueError:
            return []
        items = value if isinstance(value, list) else [value]
        calls = [_call(x, ("arguments", "parameters")) for x in items]
        return [] if not calls or None in calls else calls  # type: ignore[return-value]

    def _args_calls(self, rest: str) -> list[ToolCall]:
        """``name[ARGS]{...}`` repeated, each after a ``[TOOL_CALLS]``."""
        calls = []
        decoder = json.JSONDecoder()
        for part in rest.split(self.trigger):
            name, sep, args = part.strip().partition(self._ARGS)
            if not sep:
                return []
            try:
                obj, end = decoder.raw_decode(args.strip())
            except ValueError:
                return []
            call = _call({"name": name.strip(), "arguments": obj}, ("arguments",))
            if call is None or args.strip()[end:].strip():
                return []
            calls.append(call)
        return calls

    def _calls_grammar(self, req: ToolRequest, literal: Literal) -> list[str]:
        array: dict[str, Any] = {
            "type": "array",
            "items": self.call_schema(req.allowed()),
            "minItems": 1,
        }
        if not req.parallel:
            array["maxItems"] = 1
        array = _rebase_refs_in_items(array)
        return [
            f"calls: {literal(self.trigger)} calls_after_trigger",
            "calls_after_trigger: " + _json_rule(array),
        ]


def _rebase_refs_in_items(array: dict[str, Any]) -> dict[str, Any]:
    """The call schema's refs point at ``#/anyOf/...``; inside the array they are under
    ``#/items/anyOf/...``."""
    return {**array, "items": _rebase_refs(array["items"], "#/items")}


FORMATS: dict[str, ToolCallFormat] = {
    f.name: f for f in (HermesFormat(), Llama3JsonFormat(), MistralFormat())
}
# Aliases SGLang and vLLM users pass to --tool-call-parser.
ALIASES = {"qwen": "hermes", "qwen25": "hermes", "qwen3": "hermes", "llama3": "llama3_json"}


def get_format(name: str) -> ToolCallFormat:
    key = ALIASES.get(name, name)
    if key not in FORMATS:
        choices = ", ".join(sorted(set(FORMATS) | set(ALIASES)))
        raise KeyError(f"unknown tool call parser {name!r} (known: {choices})")
    return FORMATS[key]


def detect_format(template_source: str | None) -> ToolCallFormat | None:
    """The format a chat template's tool rendering implies, or None when it renders no tools."""
    if not template_source or "tools" not in template_source:
        return None
    if "<tool_call>" in template_source:
        return FORMATS["hermes"]
    if "[TOOL_CALLS]" in template_source:
        return FORMATS["mistral"]
    if "<|python_tag|>" in template_source or "ipython" in template_source:
        return FORMATS["llama3_json"]
    return None


def resolve_format(name: str | None, template_source: str | None) -> ToolCallFormat | None:
    """The server's tool-call format: ``--tool-call-parser`` if given (ValueError if unknown),
    else the one the chat template implies, else None (requests with tools are refused)."""
    if name:
        try:
            return get_format(name)
        except KeyError as e:
            raise ValueError(str(e.args[0])) from e
    return detect_format(template_source)


@functools.lru_cache(maxsize=16)
def trigger_is_special(fmt: ToolCallFormat, tokenizer: Any) -> bool:
    """True when the format's trigger is one special token of ``tokenizer``: it then only
    reaches the output text with ``skip_special_tokens`` off."""
    return special_token_id(fmt.trigger, tokenizer) is not None
