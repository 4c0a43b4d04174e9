"""Graceful shutdown and stalled connections (issue 16, item 5).

SIGTERM goes to the server's whole process group, as Ctrl-C and service managers send it: the
children must ignore it and keep serving while the main process drains. Requests queue behind
``--max-running-requests 1`` so that some are still in flight when the signal arrives.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.server.conftest import read_sse

LONG = {"max_new_tokens": 480, "ignore_eos": True, "temperature": 0}
NUM_STREAMS = 8
NUM_PLAIN = 4


def _stream(url: str, first: threading.Event) -> list | tuple[int, dict]:
    """The SSE events of one streamed /generate (data payloads; '[DONE]' as a string), or
    (status, body) when it is refused before its stream starts."""
    body = {"text": "Once upon a time", "sampling_params": LONG, "stream": True}
    req = urllib.request.Request(url + "/generate", data=json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return read_sse(resp, first.set)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _completion(url: str) -> tuple[int, dict]:
    body = {"model": "stories260K", "prompt": "The dog", "max_tokens": 300, "ignore_eos": True}
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _load_then_sigterm_group(server) -> tuple[list, list]:
    """Start NUM_STREAMS streams and NUM_PLAIN completions, SIGTERM the process group once the
    first stream has a chunk; return (stream events, completion answers) when all ended."""
    streams: list = [None] * NUM_STREAMS
    plain: list = [None] * NUM_PLAIN
    first = threading.Event()

    def run_stream(i: int) -> None:
        streams[i] = _stream(server.url, first)

    def run_plain(i: int) -> None:
        plain[i] = _completion(server.url)

    threads = [threading.Thread(target=run_stream, args=(i,)) for i in range(NUM_STREAMS)]
    threads += [threading.Thread(target=run_plain, args=(i,)) for i in range(NUM_PLAIN)]
    for t in threads:
        t.start()
    assert first.wait(60), "no stream started"
    os.killpg(server.proc.pid, signal.SIGTERM)  # the server leads its own group
    time.sleep(0.5)
    try:  # no new work is admitted: the port is closed (or answers 503)
        assert server.get("/health")[0] == 503
    except OSError:
        pass
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a request never ended"
    return streams, plain


def _exit_code(server) -> int:
    server.proc.wait(30)
    return server.proc.returncode


def test_sigterm_to_the_group_drains_in_flight_requests(start_server):
    server = start_server(
        "--max-running-requests", "1", "--graceful-shutdown-timeout", "120", new_session=True
    )
    streams, plain = _load_then_sigterm_group(server)
    for events in streams:
        assert events[-1] == "[DONE]", events[-3:]
        final = events[-2]["meta_info"]
        assert final["finish_reason"]["type"] == "length" and final["completion_tokens"] == 480
    for status, body in plain:
        assert status == 200 and body["usage"]["completion_tokens"] == 300, body
    assert _exit_code(server) == 0
    with open(server.log_path) as f:
        log = f.read()
    assert "fatal" not in log and "died" not in log, log[-3000:]
    assert "SIGTERM ignored" in log  # the children saw the group's signal and stayed


def test_drain_deadline_ends_streams_with_an_error_event(start_server):
    server = start_server(
        "--max-running-requests", "1", "--graceful-shutdown-timeout", "0", new_session=True
    )
    streams, plain = _load_then_sigterm_group(server)
    ended = 0
    for events in streams:
        if isinstance(events, tuple):  # ended before its stream started: a plain 503
            plain.append(events)
            continue
        assert events[-1] == "[DONE]", events[-3:]  # every stream is closed properly
        last = events[-2]
        if "error" in last:
            ended += 1
            assert last["error"]["code"] == 503
            assert "--graceful-shutdown-timeout" in last["error"]["message"]
        else:
            assert last["meta_info"]["finish_reason"]["type"] == "length"
    refused = [b for s, b in plain if s == 503]
    assert ended >= 1 and refused, (ended, plain)
    for body in refused:
        assert "--graceful-shutdown-timeout" in body["error"]["message"]
    assert _exit_code(server) == 0


@pytest.fixture(scope="module")
def strict_server(start_server):
    return start_server("--read-timeout", "2")


def _recv_all(s: socket.socket, limit: float) -> bytes:
    s.settimeout(limit)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_stalled_headers_are_closed(strict_server):
    s = socket.create_connection(("127.0.0.1", strict_server.port))
    start = time.monotonic()
    s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\n")  # never finishes the headers
    assert _recv_all(s, 30) == b""  # closed by the server
    assert 1.5 < time.monotonic() - start < 25
    assert strict_server.generate({"text": "Hi", "sampling_params": {"max_new_tokens": 2}})


def test_stalled_body_is_a_408_and_closed(strict_server):
    s = socket.create_connection(("127.0.0.1", strict_server.port))
    s.sendall(
        b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"text": '
    )
    reply = _recv_all(s, 30).decode()
    assert reply.startswith("HTTP/1.1 408"), reply
    assert "--read-timeout" in reply and "connection: close" in reply.lower()
    assert strict_server.generate({"text": "Hi", "sampling_params": {"max_new_tokens": 2}})


def test_slow_but_steady_requests_are_served(strict_server):
    """The deadline is for the whole body, so a body sent in pieces within it is served."""
    body = json.dumps({"text": "Once upon", "sampling_params": {"max_new_tokens": 2}}).encode()
    s = socket.create_connection(("127.0.0.1", strict_server.port))
    s.sendall(
        b"POST /generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    for i in range(0, len(body), 20):
        s.sendall(body[i : i + 20])
        time.sleep(0.1)
    assert _recv_all(s, 30).decode().startswith("HTTP/1.1 200")


def test_disconnect_storm_leaves_no_kv(server):
    """60 streams on all three routes, each dropped after 0-3 chunks while the others run:
    every request is aborted or finished, and the KV in use returns to where it was."""
    import random

    from tests.server.conftest import raw_post

    idle = server.wait_idle()["num_used_tokens"]
    rng = random.Random(7)
    sp = {"max_new_tokens": 200, "ignore_eos": True}
    bodies = [
        ("/generate", {"text": "Once upon a time", "stream": True,
                       "sampling_params": {**sp, "n": 2}}),
        ("/v1/completions", {"model": "stories260K", "prompt": "The dog", "stream": True,
                             "max_tokens": 200, "ignore_eos": True, "n": 3}),
        ("/v1/chat/completions", {"model": "stories260K", "stream": True, "max_tokens": 200,
                                  "messages": [{"role": "user", "content": "Hi"}]}),
    ]  # fmt: skip

    def one(i: int) -> None:
        path, body = bodies[i % len(bodies)]
        s = raw_post(server.port, path, body)
        try:
            for _ in range(rng.randrange(4)):
                if not s.recv(4096):
                    break
        finally:
            s.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stats = server.wait_idle(60)
    assert stats["num_used_tokens"] == idle, stats
    assert server.generate({"text": "Hi", "sampling_params": {"max_new_tokens": 2}})
