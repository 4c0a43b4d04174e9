"""Helpers shared by the native and the OpenAI routes: SSE encoding, waiting for a generator's
first result unless the client leaves (then the caller aborts it), and closing a generator
even from a cancelled task."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import Request

logger = logging.getLogger(__name__)

SSE_DONE = "data: [DONE]\n\n"


class ClientDisconnected(Exception):
    """The HTTP client went away while we waited for the engine."""


async def next_unless_disconnected(request: Request, it: AsyncIterator[Any]) -> Any:
    """The iterator's next item, or ClientDisconnected if the client leaves first."""
    nxt = asyncio.ensure_future(it.__anext__())
    watch = asyncio.ensure_future(wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({nxt, watch}, return_when=asyncio.FIRST_COMPLETED)
        if nxt in done:
            try:
                return nxt.result()
            except StopAsyncIteration:
                raise RuntimeError("the backend produced no result") from None
        raise ClientDisconnected
    finally:
        for task in (nxt, watch):
            task.cancel()
        # Let the cancelled __anext__ unwind before anyone closes the iterator.
        await asyncio.gather(nxt, watch, return_exceptions=True)


async def wait_disconnect(request: Request) -> None:
    # The body has been read, so the next ASGI message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def close_quietly(it: AsyncIterator[Any]) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is None:
        return
    with anyio.CancelScope(shield=True):
        try:
            await aclose()
        except Exception:
            logger.exception("closing the backend stream failed")


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
