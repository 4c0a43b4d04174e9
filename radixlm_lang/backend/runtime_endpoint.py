"""``RuntimeEndpoint``: a RadixLM (or SGLang) server over HTTP; ``Runtime``: one started for you.

HTTP goes through one pooled ``requests.Session`` per endpoint (keep-alive connections reused
across calls and threads: ``run_batch`` workers share the pool). Like SGLang's client: JSON,
GET when there is no body and POST with one, ``Authorization: Bearer <key>`` when an API key
is set, and any status but 200 raises ``RuntimeError(<response body>)``. Streams are SSE read
line by line (``data: {json}`` events with cumulative ``text``, ending at ``data: [DONE]``).
"""

from __future__ import annotations

import atexit
import json
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from radixlm_lang.backend.native import NativeBackend
from radixlm_lang.tools import ChatToolRenderer, ToolsUnsupportedError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 600.0  # seconds per HTTP call (a long generation is one call)


POOL_SIZE = 128  # keep-alive connections per endpoint (run_batch's threads share them)


def http_session(pool_size: int = POOL_SIZE) -> requests.Session:
    """A session whose connection pool holds ``pool_size`` keep-alive connections per host."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def http_request(
    session: requests.Session,
    url: str,
    body: Any = None,
    api_key: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    stream: bool = False,
) -> requests.Response:
    """GET (no body) or POST (JSON body) on ``session``; returns the response (for ``stream``,
    unread). Non-200 → RuntimeError(body). Transport failures raise OSError."""
    headers = {"Content-Type": "application/json"}
    if stream:
        headers["Accept"] = "text/event-stream"
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = None if body is None else json.dumps(body).encode()
    try:
        resp = session.request(
            "GET" if body is None else "POST", url, data=data, headers=headers,
            timeout=timeout, stream=stream,
        )  # fmt: skip
    except requests.RequestException as e:
        raise ConnectionError(str(e)) from e
    if resp.status_code != 200:
        text = resp.text
        resp.close()
        raise RuntimeError(text)
    return resp


def _read_json(resp: requests.Response) -> Any:
    with resp:
        text = resp.text
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return text  # e.g. /flush_cache answers plain text


class RuntimeEndpoint(NativeBackend):
    """A running server at ``base_url`` (e.g. ``http://127.0.0.1:30000``).

    The chat template comes from ``chat_template_name`` or else from the server's
    ``/get_model_info`` ``model_path``.

    Gens with tools are rendered client-side exactly as the server's chat path renders them,
    and sent as token ids: the tokenizer is loaded from ``tokenizer_path`` (default: the
    server's, which must then be readable here), the Jinja template is ``tool_chat_template``
    (default: the server's ``--chat-template``, else the tokenizer's own) and the call format
    ``tool_call_parser`` (default: the server's ``--tool-call-parser``, else the one the
    template implies).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        chat_template_name: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        tool_chat_template: str | None = None,
        tool_call_parser: str | None = None,
        tokenizer_path: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.session = http_session()
        self.model_info = self.get("/get_model_info")
        self.model_path = self.model_info["model_path"]
        self.chat_template_name = chat_template_name
        self.tool_chat_template = tool_chat_template
        self.tool_call_parser = tool_call_parser
        self.tokenizer_path = tokenizer_path
        self._tool_renderer: ChatToolRenderer | None = None

    # ---- HTTP ----------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        return _read_json(self._request(path, None))

    def post(self, path: str, body: Any) -> Any:
        return _read_json(self._request(path, body))

    def _request(self, path: str, body: Any, stream: bool = False) -> requests.Response:
        url = self.base_url + path
        return http_request(self.session, url, body, self.api_key, self.timeout, stream)

    def _call(self, body: dict[str, Any]) -> dict[str, Any] | list[dict[str, Any]]:
        return self.post("/generate", body)

    def _stream(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        resp = self._request("/generate", body, stream=True)
        with resp:
            for raw in resp.iter_lines():
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                payload = line[len("data:") :].strip()
                if payload == "[DONE]":
                    return
                event = json.loads(payload)
                if isinstance(event, dict) and "error" in event:
                    raise RuntimeError(json.dumps(event))
                yield event

    # ---- Backend -------------------------------------------------------------------------
    def tool_renderer(self) -> ChatToolRenderer:
        """Resolved once: the options given, else the server's own settings."""
        if self._tool_renderer is None:
            info = self.get_server_info()
            path = self.tokenizer_path or self.model_info.get("tokenizer_path")
            try:
                from radixlm.tokenizer import load_tokenizer

                tokenizer = load_tokenizer(path)
            except Exception as e:  # noqa: BLE001 - any failure means the same fix
                raise ToolsUnsupportedError(
                    f"gens with tools render the chat client-side and need the server's "
                    f"tokenizer, which could not be loaded from {path!r} ({e}); pass "
                    "tokenizer_path= (a local copy of it) to RuntimeEndpoint"
                ) from e
            from radixlm.errors import RadixLMError

            template = self.tool_chat_template or info.get("chat_template")
            parser = self.tool_call_parser or info.get("tool_call_parser")
            try:
                self._tool_renderer = ChatToolRenderer.resolve(tokenizer, template, parser)
            except (ValueError, RadixLMError) as e:
                raise ToolsUnsupportedError(
                    f"cannot resolve the chat template {template!r} for gens with tools ({e}); "
                    "pass tool_chat_template= (a name or a local Jinja file) to RuntimeEndpoint"
                ) from e
        return self._tool_renderer

    def flush_cache(self) -> bool:
        """Empty the server's prefix cache; RuntimeError while requests are running."""
        self.post("/flush_cache", {"empty_cache": True})
        return True

    def get_server_info(self) -> dict[str, Any]:
        return self.get("/get_server_info")

    def get_model_info(self) -> dict[str, Any]:
        return self.get("/get_model_info")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_args_to_argv(args: dict[str, Any]) -> list[str]:
    """``{"max_total_tokens": 2000, "disable_radix_cache": True}`` → CLI flags.

    ``True`` → a bare flag, ``False``/``None`` → omitted, a list → the flag then each value.
    """
    argv: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


class Runtime:
    """Start ``python -m radixlm.launch_server`` in a child process and connect to it.

    ``Runtime(model_path=..., max_total_tokens=..., ...)``: keyword arguments are server flags
    in snake_case. The port defaults to a free one. Waits until ``/health_generate`` answers
    200 (``launch_timeout`` seconds). ``endpoint`` is the ``RuntimeEndpoint`` to run programs
    on; ``shutdown()`` stops the server (also at interpreter exit).
    """

    def __init__(
        self,
        *,
        launch_timeout: float = 300.0,
        chat_template_name: str | None = None,
        log_file: str | None = None,
        **server_args: Any,
    ) -> None:
        host = server_args.get("host") or "127.0.0.1"
        server_args.setdefault("port", free_port(host))
        self.url = f"http://{host}:{server_args['port']}"
        self.server_args = server_args
        cmd = [sys.executable, "-m", "radixlm.launch_server", *server_args_to_argv(server_args)]
        self._log = open(log_file, "w") if log_file else None
        self.process: subprocess.Popen | None = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT if self._log else None
        )
        atexit.register(self.shutdown)
        try:
            self._wait_healthy(launch_timeout, server_args.get("api_key"))
            self.endpoint = RuntimeEndpoint(
                self.url, server_args.get("api_key"), chat_template_name=chat_template_name
            )
        except BaseException:
            self.shutdown()
            raise

    def _wait_healthy(self, timeout: float, api_key: str | None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise RuntimeError(f"the server exited during start-up (code {code})")
            try:
                with http_session(1) as session:
                    http_request(session, self.url + "/health_generate", None, api_key, 30).close()
                return
            except (OSError, RuntimeError):
                time.sleep(0.2)
        raise TimeoutError(f"the server at {self.url} was not healthy after {timeout} s")

    def generate(self, prompt: str | list[str], sampling_params: dict | None = None, **kw: Any):
        """A raw native ``/generate`` call (``kw``: other body fields)."""
        body = {"text": prompt, "sampling_params": sampling_params or {}, **kw}
        return self.endpoint.post("/generate", body)

    def shutdown(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 15 s). Idempotent."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __del__(self) -> None:
        if getattr(self, "process", None) is not None:
            self.shutdown()
