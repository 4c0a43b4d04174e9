"""Chat templates: turn an OpenAI-style ``messages`` list into prompt token ids.

A :class:`ChatTemplate` is resolved once at startup (:func:`resolve_chat_template`): a name from
the built-in registry, a Jinja file, the tokenizer's own ``chat_template``, or — when the
tokenizer has none — the ``plain`` transcript fallback::

    System: You are terse.
    User: Hi
    Assistant: Hello!
    User: Tell me a story.
    Assistant:

(each message as ``"{Role}: {content}\\n"``, then ``"Assistant:"`` as the generation prompt; its
stop strings ``"\\nUser:"`` / ``"\\nSystem:"`` end the turn when a base model starts writing the
next one). ``plain`` is rendered in Python (``source is None``); everything else is Jinja in a
sandbox with the globals Hugging Face templates expect (``raise_exception``, ``strftime_now``,
``tojson``, the tokenizer's special tokens, ``{% generation %}`` blocks).

Invariants: messages are validated before rendering (:mod:`radixlm.server.chat_messages`), and
every problem raises :class:`RequestError` saying what to fix. Tools and tool messages reach
Jinja templates as Hugging Face's ``apply_chat_template`` passes them (``tools=`` the
``{"type": "function", "function": ...}`` list; call ``arguments`` as mappings), so a template
renders here what it renders in transformers. The BOS token is
never doubled: when the template emits it (or the text starts with it) the text is tokenized with
``add_special_tokens=False``. This module imports nothing from the server's runtime (only
``chat_messages``), so the frontend DSL can reuse the registry client-side.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from radixlm.errors import ConfigError, RequestError
from radixlm.server.chat_messages import normalize_messages

logger = logging.getLogger(__name__)

# Marks the end of the final message when continuing it (cut away after rendering).
_CONTINUE_MARK = "\x00radixlm-continue\x00"
# End-of-turn markers whose presence in a template source makes them stop strings.
_KNOWN_TURN_ENDS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>")


@dataclass(frozen=True)
class ChatTemplate:
    """A resolved chat template.

    ``source`` is Jinja text, or None for the built-in ``plain`` transcript. ``stop`` holds the
    strings that end an assistant turn (merged into a chat request's ``stop``). ``includes_bos``
    means the rendered text already starts with the BOS token, so the tokenizer must not add one.
    """

    name: str
    source: str | None
    stop: tuple[str, ...] = ()
    includes_bos: bool = False


_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_LLAMA2_CHAT = (
    "{% if messages[0].role == 'system' %}{% set sys = messages[0].content %}"
    "{% set turns = messages[1:] %}{% else %}{% set sys = none %}{% set turns = messages %}"
    "{% endif %}"
    "{% if not turns %}{{ raise_exception('llama-2-chat needs at least one user message') }}"
    "{% endif %}{% for m in turns %}"
    "{% if m.role != ('user' if loop.index0 % 2 == 0 else 'assistant') %}"
    "{{ raise_exception('llama-2-chat needs user/assistant turns alternating, starting with "
    "user (after an optional system message)') }}{% endif %}"
    "{% if m.role == 'user' %}{{ bos_token }}[INST] "
    "{% if loop.first and sys is not none %}<<SYS>>\n{{ sys }}\n<</SYS>>\n\n{% endif %}"
    "{{ m.content | trim }} [/INST]"
    "{% else %} {{ m.content | trim }} {{ eos_token }}{% endif %}"
    "{% endfor %}"
)
_LLAMA3_INSTRUCT = (
    "{{ bos_token }}{% for m in messages %}"
    "<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
_MISTRAL = (
    "{% if messages[0].role == 'system' %}{% set sys = messages[0].content %}"
    "{% set turns = messages[1:] %}{% else %}{% set sys = none %}{% set turns = messages %}"
    "{% endif %}"
    "{% if not turns %}{{ raise_exception('mistral needs at least one user message') }}"
    "{% endif %}{{ bos_token }}{% for m in turns %}"
    "{% if m.role != ('user' if loop.index0 % 2 == 0 else 'assistant') %}"
    "{{ raise_exception('mistral needs user/assistant turns alternating, starting with user "
    "(after an optional system message)') }}{% endif %}"
    "{% if m.role == 'user' %}[INST] "
    "{% if loop.first and sys is not none %}{{ sys }}\n\n{% endif %}{{ m.content }} [/INST]"
    "{% else %}{{ m.content }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)

TEMPLATES: dict[str, ChatTemplate] = {
    "chatml": ChatTemplate("chatml", _CHATML, ("<|im_end|>",)),
    "qwen": ChatTemplate("qwen", _CHATML, ("<|im_end|>",)),
    "llama-2-chat": ChatTemplate("llama-2-chat", _LLAMA2_CHAT, (), includes_bos=True),
    "llama-3-instruct": ChatTemplate(
        "llama-3-instruct", _LLAMA3_INSTRUCT, ("<|eot_id|>",), includes_bos=True
    ),
    "mistral": ChatTemplate("mistral", _MISTRAL, (), includes_bos=True),
    "plain": ChatTemplate("plain", None, ("\nUser:", "\nSystem:")),
}


def resolve_chat_template(tokenizer: Any | None, override: str | None) -> ChatTemplate:
    """Pick the template a server uses: ``override`` (a registered name or a Jinja file path),
    else the tokenizer's own ``chat_template``, else ``plain``. Raises :class:`ConfigError` for
    an override that is neither a known name nor a readable file."""
    if override:
        if override in TEMPLATES:
            chosen = TEMPLATES[override]
        elif os.path.isfile(override):
            try:
                with open(override, encoding="utf-8") as f:
                    source = f.read()
            except OSError as e:
                raise ConfigError(f"cannot read chat template file {override!r}: {e}") from e
            chosen = _from_source(os.path.basename(override), source)
        else:
            raise ConfigError(
                f"chat template {override!r} is neither a known name "
                f"({', '.join(TEMPLATES)}) nor a path to a Jinja file"
            )
    else:
        source = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
        if isinstance(source, dict):  # older tokenizers: several named templates
            source = source.get("default")
        chosen = _from_source("tokenizer", source) if source else TEMPLATES["plain"]
    if chosen.source is not None:
        _compile(chosen.source)  # fail at startup, not on the first request
    logger.info("chat template: %s (stop strings %s)", chosen.name, list(chosen.stop))
    return chosen


def _from_source(name: str, source: str) -> ChatTemplate:
    stop = tuple(s for s in _KNOWN_TURN_ENDS if s in source)
    return ChatTemplate(name, source, stop, includes_bos="bos_token" in source)


# ---- rendering ---------------------------------------------------------------------------
def render_text(
    template: ChatTemplate,
    messages: Any,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    chat_template_kwargs: dict[str, Any] | None = None,
    special_tokens: dict[str, str] | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """Render ``messages`` to prompt text (no tokenizer needed; ``special_tokens`` fills
    ``bos_token``/``eos_token``/... in Jinja templates; ``tools``, the OpenAI tool objects, are
    passed to the template as ``tools``, as transformers does)."""
    msgs = normalize_messages(messages)
    if continue_final_message:
        if add_generation_prompt:
            raise RequestError(
                "continue_final_message and add_generation_prompt cannot both be true"
            )
        if msgs[-1]["role"] != "assistant":
            raise RequestError("continue_final_message needs the last message to be assistant's")
        msgs[-1] = {**msgs[-1], "content": msgs[-1]["content"].rstrip() + _CONTINUE_MARK}
    kwargs = dict(chat_template_kwargs or {})
    if not all(isinstance(k, str) for k in kwargs):
        raise RequestError("chat_template_kwargs keys must be strings")
    for reserved in ("messages", "add_generation_prompt", "tools"):
        if reserved in kwargs:
            raise RequestError(f"chat_template_kwargs must not set {reserved!r}")
    if template.source is None:
        text = _render_plain(msgs, add_generation_prompt, tools)
    else:
        context = {**(special_tokens or {}), **kwargs}
        if tools:
            context["tools"] = tools
        try:
            text = _compile(template.source).render(
                messages=msgs, add_generation_prompt=add_generation_prompt, **context
            )
        except _TemplateError as e:
            raise RequestError(f"chat template {template.name!r} rejected the messages: {e}") from e
    if continue_final_message:
        cut = text.find(_CONTINUE_MARK)
        if cut == -1:
            raise RequestError(
                f"chat template {template.name!r} does not render the final message, so it "
                "cannot be continued"
            )
        text = text[:cut]
    return text


def _render_plain(
    msgs: list[dict[str, Any]], add_generation_prompt: bool, tools: list[dict] | None = None
) -> str:
    lines = []
    if tools:
        lines.append(f"Tools: {json.dumps(tools, ensure_ascii=False)}\n")
    for m in msgs:
        content = m["content"]
        if m.get("tool_calls"):
            calls = [c["function"] for c in m["tool_calls"]]
            content = (content + "\n" if content else "") + json.dumps(calls, ensure_ascii=False)
        lines.append(f"{m['role'].capitalize()}: {content}\n")
    text = "".join(lines)
    if _CONTINUE_MARK in text:
        return text  # continue_final_message: the caller cuts at the mark
    return text + ("Assistant:" if add_generation_prompt else "")


def render_chat(
    template: ChatTemplate,
    tokenizer: Any | None,
    messages: Any,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    chat_template_kwargs: dict[str, Any] | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> list[int]:
    """Render and tokenize ``messages``; returns prompt token ids ready for generation."""
    if tokenizer is None:
        raise RequestError(
            "chat needs a tokenizer and this server runs without one; send token ids to "
            "/v1/completions instead"
        )
    text = render_text(
        template,
        messages,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
        chat_template_kwargs=chat_template_kwargs,
        special_tokens=special_tokens_of(tokenizer),
        tools=tools,
    )
    bos = getattr(tokenizer, "bos_token", None)
    has_bos = template.includes_bos or bool(bos and text.startswith(bos))
    ids = tokenizer.encode(text, add_special_tokens=not has_bos)
    if not ids:
        raise RequestError("the rendered chat prompt is empty; send a non-empty message")
    return list(ids)


def special_tokens_of(tokenizer: Any) -> dict[str, str]:
    """``bos_token``, ``eos_token``, ... as the strings templates interpolate."""
    out = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = getattr(tokenizer, name, None)
        out[name] = value if isinstance(value, str) else ""
    return out


def split_stops(template: ChatTemplate, tokenizer: Any | None) -> tuple[list[str], list[int]]:
    """The template's stops as (strings matched in the output text, token ids).

    NOTE: a stop that is a single special token (``<|im_end|>``, ``<|eot_id|>``) is matched by
    id: special tokens are skipped when output is detokenized, so its text never appears.
    """
    strings, ids = [], []
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    if tokenizer is not None and hasattr(tokenizer, "get_added_vocab"):
        special.update(tokenizer.get_added_vocab().values())
    for s in template.stop:
        enc = tokenizer.encode(s, add_special_tokens=False) if tokenizer is not None else []
        if len(enc) == 1 and enc[0] in special:
            ids.append(enc[0])
        else:
            strings.append(s)
    return strings, ids


# ---- Jinja -------------------------------------------------------------------------------
class _TemplateError(Exception):
    """Raised for any Jinja failure (syntax, undefined attribute, ``raise_exception``)."""


@functools.lru_cache(maxsize=16)
def _compile(source: str) -> Any:
    """Compile ``source`` in a sandbox; the returned object's ``render`` raises _TemplateError."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` (marks assistant text): renders the body."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, **kw: Any) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, **kw)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols, GenerationBlock],
    )
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = tojson
    try:
        compiled = env.from_string(source)
    except jinja2.exceptions.TemplateError as e:
        raise ConfigError(f"the chat template does not compile: {e}") from e

    class Renderer:
        def render(self, **context: Any) -> str:
            try:
                return compiled.render(**context)
            except jinja2.exceptions.TemplateError as e:
                raise _TemplateError(str(e)) from e

    return Renderer()
