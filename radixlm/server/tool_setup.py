"""The server's tool-call format, chosen once at startup and logged (``--tool-call-parser``)."""

from __future__ import annotations

import logging

from radixlm.function_call.formats import ToolCallFormat, resolve_format
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
