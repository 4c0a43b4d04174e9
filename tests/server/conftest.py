"""Real server processes on free loopback ports (``python -m radixlm.launch_server``)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from radixlm_lang.backend.runtime_endpoint import free_port

STARTUP_TIMEOUT = 120.0


class Server:
    """A running ``radixlm serve`` with helpers for the native API."""

    def __init__(self, *args: str, log_path: str, new_session: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        cmd = [sys.executable, "-m", "radixlm.launch_server", "--port", str(self.port)]
        cmd += ["--num-threads", "1", "--max-total-tokens", "20000", *args]
        if "--grammar-compile-timeout" not in args:  # a loaded CI machine compiles slowly
            cmd += ["--grammar-compile-timeout", "600"]
        self.log = open(log_path, "w")
        # new_session: its own process group, for tests that signal the whole group
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=new_session
        )
        try:
            self._wait_ready()
        except BaseException:
            self.proc.kill()  # a server that never got ready is not left running
            self.proc.wait(10)
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited during start-up:\n{self.read_log()}")
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready in {STARTUP_TIMEOUT} s:\n{self.read_log()}")

    def read_log(self) -> str:
        with open(self.log_path) as f:
            return f.read()[-5000:]

    def request(
        self, method: str, path: str, body: Any = None, headers: dict | None = None, raw=None
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                status, text = resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            return status, json.loads(text) if text else None
        except json.JSONDecodeError:
            return status, text

    def get(self, path: str, **kw) -> tuple[int, Any]:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw) -> tuple[int, Any]:
        return self.request("POST", path, body, **kw)

    def generate(self, body: dict) -> Any:
        status, out = self.post("/generate", body)
        assert status == 200, out
        return out

    def stream(self, body: dict) -> list[Any]:
        """SSE events of a streamed /generate, ending with the string '[DONE]'."""
        req = urllib.request.Request(
            self.url + "/generate", data=json.dumps({**body, "stream": True}).encode()
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            return read_sse(resp)

    def scheduler_stats(self) -> dict:
        return self.get("/get_server_info")[1]["scheduler"]

    def wait_idle(self, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            s = self.scheduler_stats()
            if s["num_running_reqs"] == 0 and s["num_waiting_reqs"] == 0:
                return s
            if time.monotonic() > deadline:
                raise AssertionError(f"server not idle after {timeout} s: {s}")
            time.sleep(0.1)

    def child_pid(self, name: str) -> int:
        """Pid of the ``scheduler`` or ``detokenizer`` child, from the start-up log line."""
        match = re.search(rf"{name} \(pid (\d+)\)", self.read_log())
        assert match, f"no {name} pid in the log"
        return int(match.group(1))

    def wait_exit_seeing_503(self, timeout: float) -> bool:
        """Poll /health until the server exits; whether it answered 503 meanwhile."""
        saw_503 = False
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                saw_503 |= self.get("/health")[0] == 503
            except OSError:
                pass
            time.sleep(0.1)
        return saw_503

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode


def read_sse(resp: Any, on_event: Any = None) -> list[Any]:
    """The ``data:`` payloads of an SSE response (JSON, or the string '[DONE]');
    ``on_event()`` is called after each."""
    events: list[Any] = []
    for line in resp:
        line = line.decode().strip()
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
            if on_event is not None:
                on_event()
    return events


def raw_post(port: int, path: str, body: dict, headers: dict | None = None) -> socket.socket:
    """Send a POST by hand and return the open socket (tests that drop connections)."""
    payload = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return s


@pytest.fixture(scope="session")
def start_server(tmp_path_factory) -> Iterator[Any]:
    servers: list[Server] = []
    logs = tmp_path_factory.mktemp("server_logs")

    def start(*args: str, new_session: bool = False) -> Server:
        log = os.path.join(logs, f"server{len(servers)}.log")
        s = Server(*args, log_path=log, new_session=new_session)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def server(start_server) -> Server:
    """The bundled model, default options (on CPU: no overlap)."""
    return start_server()


@pytest.fixture(scope="session")
def engine():
    """The in-process reference on the same model."""
    import radixlm

    with radixlm.Engine(max_total_tokens=20000, num_threads=1) as e:
        yield e
