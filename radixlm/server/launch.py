"""Start the server: spawn the scheduler and detokenizer, wait for their handshake, serve HTTP.

Phases (one INFO line each): processes spawned → tokenizer loaded → scheduler ready (KV pool,
limits) → detokenizer ready → listening. The port is bound first (a busy port fails at once)
and accepts connections only after the handshake. On Ctrl-C or SIGTERM — to this process or to
its whole group — the server drains (``serving.DrainingServer``); the children ignore those
signals and are stopped here afterwards. On a fatal watchdog verdict it exits at once. The exit
code is non-zero when a child died or hung, or start-up failed.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import multiprocessing
import os
import socket
from contextlib import asynccontextmanager

from radixlm.config import EngineConfig
from radixlm.errors import ModelLoadError
from radixlm.server import codec
from radixlm.server.detokenizer_process import run_detokenizer_process
from radixlm.server.io_struct import DetokenizerReady, SchedulerFailed, SchedulerReady
from radixlm.server.ipc import IpcNames, pull_socket
from radixlm.server.options import ServerConfig
from radixlm.server.scheduler_process import run_scheduler_process
from radixlm.server.tokenizer_manager import ChildProcess, TokenizerManager

logger = logging.getLogger(__name__)

FATAL_EXIT_DELAY = 1.0  # seconds /health answers 503 before the server exits


class StartupError(RuntimeError):
    """A child process failed to start; the message says why."""


def _wait_for_children(ipc: IpcNames, children: list[ChildProcess]) -> SchedulerReady:
    import zmq

    ctx = zmq.Context()
    recv = pull_socket(ctx, ipc.main_input)
    ready: SchedulerReady | None = None
    detok_ready = False
    try:
        while ready is None or not detok_ready:
            if recv.poll(500):
                msg = codec.decode(recv.recv())
                if isinstance(msg, SchedulerReady):
                    ready = msg
                    logger.info(
                        "scheduler ready: %s on %s (%s), KV pool %d tokens, max running "
                        "requests %d, context length %d",
                        msg.architecture, msg.device, msg.dtype, msg.max_total_tokens,
                        msg.max_running_requests, msg.context_length,
                    )  # fmt: skip
                elif isinstance(msg, DetokenizerReady):
                    detok_ready = True
                    logger.info("detokenizer ready")
                elif isinstance(msg, SchedulerFailed):
                    raise StartupError(f"the scheduler failed to start: {msg.message}")
                continue
            for c in children:
                if not c.process.is_alive():
                    raise StartupError(
                        f"the {c.name} process exited with code {c.process.exitcode} during start-up"
                    )
    finally:
        recv.close()
        ctx.term()
    return ready


def _stop(children: list[ChildProcess]) -> None:
    """SIGKILL: the children ignore SIGTERM/SIGINT (see ``ignore_stop_signals``), and hold
    nothing that needs a clean exit (the IPC directory is removed here)."""
    for c in children:
        if c.process.is_alive():
            c.process.kill()
    for c in children:
        c.process.join(5)


def bind_listen_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything is loaded: a port in use (or a host that is
    not this machine's) fails the start at once, not after the model has loaded. uvicorn
    serves on it as is, so no other process can take the port in between."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise StartupError(f"cannot listen on {host}:{port}: {e}") from e
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        reason = "the port is in use" if e.errno == errno.EADDRINUSE else str(e)
        raise StartupError(
            f"cannot listen on {host}:{port}: {reason}; choose another --port or stop the "
            "process that holds it"
        ) from e
    sock.set_inheritable(False)
    return sock


def launch_server(engine_config: EngineConfig, server_config: ServerConfig) -> int:
    """Run until stopped; returns the process exit code."""
    from radixlm.server.chat_template import resolve_chat_template
    from radixlm.server.http_server import create_app
    from radixlm.server.serving import make_server
    from radixlm.server.tool_setup import reasoning_for, tool_format_for
    from radixlm.tokenizer import load_tokenizer

    try:
        listen = bind_listen_socket(server_config.host, server_config.port)
    except StartupError as e:
        logger.error("%s", e)
        return 1
    ipc = IpcNames.create()
    mp = multiprocessing.get_context("spawn")
    me = os.getpid()
    children = [
        ChildProcess(
            "scheduler",
            mp.Process(
                target=run_scheduler_process,
                args=(engine_config, ipc, me, server_config.decode_log_interval),
                name="radixlm-scheduler",
                daemon=True,
            ),
        ),
        ChildProcess(
            "detokenizer",
            mp.Process(
                target=run_detokenizer_process,
                args=(engine_config, ipc, me),
                name="radixlm-detokenizer",
                daemon=True,
            ),
        ),
    ]
    try:
        for c in children:
            c.process.start()
        logger.info("spawned scheduler (pid %d) and detokenizer (pid %d)",
                    children[0].process.pid, children[1].process.pid)  # fmt: skip
        tokenizer = None
        if not engine_config.skip_tokenizer_init:
            tokenizer = load_tokenizer(engine_config.tokenizer_path)
            logger.info("tokenizer loaded from %s", engine_config.tokenizer_path)
        try:
            ready = _wait_for_children(ipc, children)
        except (StartupError, ModelLoadError) as e:
            logger.error("%s", e)
            return 1
        template = resolve_chat_template(tokenizer, server_config.chat_template)
        tm = TokenizerManager(
            engine_config,
            server_config,
            tokenizer,
            ready,
            ipc,
            children,
            chat_template=template,
            tool_format=tool_format_for(server_config.tool_call_parser, template),
            reasoning=reasoning_for(server_config.reasoning_parser, tokenizer),
        )
        if server_config.enable_metrics:
            from radixlm.server.metrics import ServerMetrics

            tm.metrics = ServerMetrics(
                tm.served_model_name,
                server_config.metrics_compat,
                {c.name: c.process.pid for c in children},
            )

        @asynccontextmanager
        async def lifespan(app):
            await tm.start()
            logger.info(
                "ready: serving %r on http://%s:%d",
                tm.served_model_name, server_config.host, server_config.port,
            )  # fmt: skip
            yield
            await tm.stop()

        app = create_app(tm, lifespan)
        server = make_server(app, tm, server_config, engine_config.log_level)
        exit_code = 0

        def on_fatal(reason: str) -> None:
            # Keep answering /health with 503 for a moment (load balancers and clients see
            # why), then exit non-zero.
            nonlocal exit_code
            exit_code = 1
            asyncio.get_running_loop().call_later(
                FATAL_EXIT_DELAY, setattr, server, "should_exit", True
            )

        tm.on_fatal = on_fatal
        server.run(sockets=[listen])
        if not server.started:
            return 1
        return exit_code
    finally:
        _stop(children)
        ipc.remove()
        listen.close()
