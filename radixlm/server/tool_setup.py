"""The server's chat output formats, chosen once at startup and logged: the tool-call format
(``--tool-call-parser``) and the reasoning format (``--reasoning-parser``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from radixlm.function_call.formats import ToolCallFormat, resolve_format
from radixlm.reasoning import ReasoningFormat, get_reasoning_format
from radixlm.server.chat_template import ChatTemplate

logger = logging.getLogger(__name__)


def tool_format_for(parser: str | None, template: ChatTemplate) -> ToolCallFormat | None:
    """``--tool-call-parser`` (already validated by ServerConfig), else the format the chat
    template renders tools in; the log says which, or that requests with tools are refused."""
    fmt = resolve_format(parser, template.source)
    if fmt is None:
        logger.info(
            "tool calls: no parser (the chat template %r renders no known tool format); "
            "requests with tools get a 400 until the server runs with --tool-call-parser",
            template.name,
        )
    else:
        how = "--tool-call-parser" if parser else f"implied by the chat template {template.name!r}"
        logger.info("tool calls: parser %s (%s)", fmt.name, how)
    return fmt


@dataclass(frozen=True)
class ReasoningSetup:
    """``--reasoning-parser``: the format, and its marker token ids when both are single
    tokens (constraints after the reasoning need them; None: such requests get a 400)."""

    fmt: ReasoningFormat
    marker_ids: tuple[int, int] | None


def reasoning_for(parser: str | None, tokenizer: Any) -> ReasoningSetup | None:
    if parser is None:
        return None
    fmt = get_reasoning_format(parser)
    ids = fmt.marker_ids(tokenizer) if tokenizer is not None else None
    if ids is None:
        logger.warning(
            "reasoning parser %s: %r / %r are not single tokens of this tokenizer; reasoning is "
            "split from the answer, but constrained requests (response_format, tools) get a "
            "400 because the constraint cannot start exactly where the reasoning ends",
            fmt.name, fmt.start, fmt.end,
        )  # fmt: skip
    else:
        logger.info("reasoning parser %s (markers are tokens %d and %d)", fmt.name, *ids)
    return ReasoningSetup(fmt, ids)
