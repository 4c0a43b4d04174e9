"""Helpers shared by the native and the OpenAI routes: SSE encoding, waiting for a generator's
first result unless the client leaves (then the caller aborts it), closing a generator even
from a cancelled task, and the SSE response that closes its generator when the client leaves."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse

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


async def close_quietly(it: AsyncIterator[Any] | None) -> None:
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


class EventStream(StreamingResponse):
    """An SSE response that watches for the client leaving while the body is produced (not only
    when a send fails) and always closes its body and the backend iterator behind it."""

    def __init__(
        self,
        events: AsyncIterator[str],
        backend_iter: AsyncIterator[Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self.backend_iter = backend_iter

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def stream() -> None:
                    with contextlib.suppress(OSError):  # the client went away mid-send
                        await self.stream_response(send)
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                await self.listen_for_disconnect(receive)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
            # The body never started if the client left at once: close the backend here too.
            await close_quietly(self.backend_iter)
