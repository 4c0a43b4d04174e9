"""Tool calls in the DSL: ``gen(..., tools=..., tool_choice=...)`` and what backends share.

A gen with tools is a chat turn, as on ``/v1/chat/completions``: its prompt is the program's
``messages`` rendered by the model's own (Hugging Face, Jinja) chat template with ``tools=``,
so it must be the first thing in an assistant turn. The output is parsed into the assistant
text and OpenAI-form calls (``{"id", "type": "function", "function": {"name", "arguments"}}``,
``arguments`` a JSON string).

- :class:`ToolSpec`: the gen's ``tools`` / ``tool_choice`` / ``parallel_tool_calls``, validated
  when the gen is built (:func:`make_tool_spec`) and kept as JSON so the IR node stays hashable.
- :class:`ToolOutput`: what a backend returns for such a gen.
- :class:`ChatToolRenderer`: for the native backends (engine, HTTP endpoint) — the server's
  chat path done client-side: render and tokenize like ``render_chat``, constrain with the call
  format's grammar (``ebnf``), parse with the format, as ``openai_protocol`` /
  ``openai_results`` do for a chat request.

``radixlm`` modules are imported lazily: importing ``radixlm_lang`` stays cheap.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any


class ToolsUnsupportedError(RuntimeError):
    """The backend cannot serve a gen with tools; the message says why and what to change."""


class ToolPositionError(ValueError):
    """A gen with tools that is not the first thing in an assistant turn."""


@dataclass(frozen=True)
class ToolSpec:
    """A gen's tool fields as the OpenAI request keys (JSON text; only the keys given)."""

    body_json: str

    @functools.cached_property
    def body(self) -> dict[str, Any]:
        """``{"tools": [...], "tool_choice": ..., "parallel_tool_calls": ...}`` (keys given)."""
        return json.loads(self.body_json)

    @functools.cached_property
    def request(self) -> Any:
        """The validated ``radixlm.function_call.tools.ToolRequest``."""
        from radixlm.function_call.tools import parse_tool_request

        return parse_tool_request(self.body)

    def openai_tools(self) -> list[dict[str, Any]]:
        """The tools as chat templates receive them (``Tool.as_openai()``)."""
        return [t.as_openai() for t in self.request.tools]

    def summary(self) -> dict[str, Any]:
        """What the debug trace records: the tool names and the choice mode."""
        req = self.request
        return {"tools": [t.name for t in req.tools], "tool_choice": req.name or req.mode}


def make_tool_spec(
    tools: Any, tool_choice: Any, parallel_tool_calls: bool | None
) -> ToolSpec | None:
    """Validate a gen's tool arguments now (``ValueError`` naming the argument to fix); None when
    the gen has no tools (then it is an ordinary gen)."""
    from radixlm.function_call.tools import ToolSpecError, parse_tool_request

    if tools is None and tool_choice is None and parallel_tool_calls is None:
        return None
    body: dict[str, Any] = {}
    for key, value in (
        ("tools", tools),
        ("tool_choice", tool_choice),
        ("parallel_tool_calls", parallel_tool_calls),
    ):
        if value is not None:
            body[key] = list(value) if key == "tools" and isinstance(value, tuple) else value
    try:
        body_json = json.dumps(body)  # key order kept: templates render the schemas as given
    except (TypeError, ValueError) as e:
        raise ValueError(f"gen tools must be JSON (OpenAI tool objects): {e}") from e
    try:
        request = parse_tool_request(json.loads(body_json))
    except ToolSpecError as e:
        raise ValueError(f"gen {e.param}: {e}") from e
    return None if request is None else ToolSpec(body_json)


@dataclass
class ToolOutput:
    """A tool gen's result. ``text`` is what the program text gets (the raw output on native
    backends, the content on OpenAI); ``content`` the assistant text without the calls (``""``
    when the output is only calls); ``calls`` the OpenAI-form calls; ``prompt_text`` the
    rendered prompt when the backend rendered it (for the debug trace)."""

    text: str
    content: str
    calls: list[dict[str, Any]]
    meta_info: dict[str, Any] = field(default_factory=dict)
    prompt_text: str | None = None


@dataclass
class ChatToolRenderer:
    """The server's chat path for tool gens, client-side. ``template`` is a
    ``radixlm.server.chat_template.ChatTemplate``; ``fmt`` the ``ToolCallFormat`` (None: the
    template renders no known format, so only ``tool_choice="none"`` can be served)."""

    template: Any
    tokenizer: Any
    fmt: Any

    @classmethod
    def resolve(
        cls, tokenizer: Any, chat_template: str | None, parser: str | None
    ) -> ChatToolRenderer:
        """As the server starts: ``chat_template`` (a registered name or a Jinja file) else the
        tokenizer's own; ``parser`` else the format the template implies."""
        from radixlm.function_call.formats import resolve_format
        from radixlm.server.chat_template import resolve_chat_template

        if tokenizer is None:
            raise ToolsUnsupportedError("tool gens need the model's tokenizer; this one has none")
        template = resolve_chat_template(tokenizer, chat_template)
        return cls(template, tokenizer, resolve_format(parser, template.source))

    def render(self, messages: list[dict[str, Any]], spec: ToolSpec) -> tuple[list[int], str]:
        """(prompt ids, prompt text) of ``messages`` with the tools, as ``render_chat``."""
        from radixlm.server.chat_template import render_chat, render_text, special_tokens_of

        if not messages:
            raise ToolPositionError("a gen with tools needs a chat: add a user turn before it")
        tools = spec.openai_tools()
        text = render_text(
            self.template, messages, special_tokens=special_tokens_of(self.tokenizer), tools=tools
        )
        return render_chat(self.template, self.tokenizer, messages, tools=tools), text

    def constrain(self, sp: dict[str, Any], spec: ToolSpec) -> None:
        """Add the template's stops and, when the model may call, the format's grammar
        (``ebnf``) to the native ``sampling_params`` ``sp`` (as ``_tool_constraints``)."""
        from radixlm.function_call.formats import trigger_is_special
        from radixlm.function_call.literals import token_literal
        from radixlm.server.chat_template import split_stops

        strings, ids = split_stops(self.template, self.tokenizer)
        stop = list(dict.fromkeys(sp.get("stop", []) + strings))
        if stop:
            sp["stop"] = stop
        if ids:
            sp["stop_token_ids"] = list(dict.fromkeys(sp.get("stop_token_ids", []) + ids))
        req = spec.request
        if not req.active:
            return
        if self.fmt is None:
            raise ToolsUnsupportedError(
                f"the chat template {self.template.name!r} renders no known tool-call format; "
                "pass tool_call_parser='hermes' | 'llama3_json' | 'mistral' to the backend "
                "(the format the model writes calls in)"
            )
        if any(sp.get(k) for k in ("regex", "json_schema", "ebnf")):
            raise ValueError(
                "a gen with tools is constrained to the tools' schemas; it cannot also take "
                "regex, json_schema or dtype (use tool_choice='none' or drop the other constraint)"
            )
        if trigger_is_special(self.fmt, self.tokenizer):
            sp["skip_special_tokens"] = False  # the parser must see the trigger token
        sp["ebnf"] = self.fmt.grammar(req, token_literal(self.tokenizer))

    def parse(
        self, text: str, meta: dict[str, Any], spec: ToolSpec, prompt_text: str
    ) -> ToolOutput:
        """The output as ``openai_results.build_response`` reads it: calls (the first only
        when parallel calls are off) and the content without them; no calls: all is content."""
        req = spec.request
        if not req.active or self.fmt is None:
            return ToolOutput(text, text, [], meta, prompt_text)
        parsed = self.fmt.parse(text)
        calls = list(parsed.calls)[: None if req.parallel else 1]
        if not calls:
            return ToolOutput(text, text, [], meta, prompt_text)
        return ToolOutput(
            text, parsed.content or "", [c.as_openai() for c in calls], meta, prompt_text
        )
