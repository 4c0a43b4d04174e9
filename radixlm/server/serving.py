"""uvicorn with this server's connection rules: a deadline for request headers, and a
graceful drain on SIGTERM / SIGINT.

- :class:`TimedH11Protocol`: a connection must deliver each request's headers within
  ``--read-timeout`` seconds (counted from the connection opening, or from the previous
  response); otherwise it is closed. A connection that trickles bytes (slowloris) cannot hold a
  slot forever. The body's deadline is checked at the ASGI layer
  (:class:`radixlm.server.request_body.BodyLimitMiddleware`), where a 408 can still be sent.
- :class:`DrainingServer`: on the first SIGTERM/SIGINT uvicorn stops accepting and closes idle
  connections; this server also stops admitting requests on the connections still open (503),
  lets in-flight requests finish for ``--graceful-shutdown-timeout`` seconds, then ends each
  remaining stream with an error event and ``[DONE]`` and each other request with a 503
  (:meth:`TokenizerManager.begin_drain`). A second SIGINT exits at once (uvicorn's force exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

# Time given to the ended streams to send their last events after the drain deadline.
FLUSH_SECONDS = 3.0


def timed_h11_protocol(read_timeout: float) -> type[H11Protocol]:
    """An h11 protocol class whose connections close when a request's headers are not
    complete ``read_timeout`` seconds after the connection opened or the last response."""

    class TimedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _seen_cycle: Any = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._check_headers()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._check_headers()
            if self.cycle is None or self.cycle.response_complete:
                self._arm()  # the next request's headers are due from now

        def _check_headers(self) -> None:
            if self.cycle is not None and self.cycle is not self._seen_cycle:
                self._seen_cycle = self.cycle  # a new request's headers are complete
                self._disarm()

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(read_timeout, self._headers_overdue)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_overdue(self) -> None:
            self._header_timer = None
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being served (its headers arrived meanwhile)
            if not self.transport.is_closing():
                logger.info(
                    "closing a connection from %s: no complete request headers in %.0f s "
                    "(--read-timeout)", self.client, read_timeout,
                )  # fmt: skip
                self.transport.close()

    return TimedH11Protocol


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` whose shutdown drains the tokenizer manager's requests first (see the
    module docstring)."""

    def __init__(self, config: uvicorn.Config, tm: Any, drain_timeout: float) -> None:
        super().__init__(config)
        self.tm = tm
        self.drain_timeout = drain_timeout

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.tm.begin_drain(self.drain_timeout)
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM start the drain (uvicorn's ``handle_exit``). Unlike uvicorn, the
        signal is not raised again afterwards: that would kill the process before the launcher
        stops the children and removes the IPC directory; the launcher exits 0 instead."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def make_server(app: Any, tm: Any, server_config: Any, log_level: str) -> DrainingServer:
    config = uvicorn.Config(
        app,
        host=server_config.host,
        port=server_config.port,
        log_level="warning" if log_level == "info" else log_level,
        access_log=log_level == "debug",
        http=timed_h11_protocol(server_config.read_timeout),
        timeout_graceful_shutdown=server_config.graceful_shutdown_timeout + FLUSH_SECONDS,
    )
    return DrainingServer(config, tm, server_config.graceful_shutdown_timeout)
