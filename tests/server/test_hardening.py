"""Hardening (issue 16, first part): bounded ``n``, bodies that are not valid Unicode JSON,
the bearer scheme in any case, and ``cache_salt`` on the OpenAI routes.

Every bad request is answered 4xx with a message that names the problem, and the server keeps
serving: each test ends with a good request.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

ROUTES = {
    "/generate": lambda text: {"text": text, "sampling_params": {"max_new_tokens": 2}},
    "/v1/completions": lambda text: {"model": "stories260K", "prompt": text, "max_tokens": 2},
    "/v1/chat/completions": lambda text: {
        "model": "stories260K", "messages": [{"role": "user", "content": text}], "max_tokens": 2,
    },
}  # fmt: skip


def _post_raw(server, path: str, raw: bytes, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(server.url + path, data=raw, method="POST")
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _message(body: dict) -> str:
    err = body["error"]
    return err if isinstance(err, str) else err["message"]


def _still_serves(server) -> None:
    for path, make in ROUTES.items():
        status, body = _post_raw(server, path, json.dumps(make("Once upon a time")).encode())
        assert status == 200, (path, body)


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_n_is_bounded(server, path):
    body = ROUTES[path]("Once upon a time")
    if path == "/generate":
        body["sampling_params"]["n"] = 65
    else:
        body["n"] = 100_000
    status, out = _post_raw(server, path, json.dumps(body).encode())
    assert status == 400 and "--max-n" in _message(out), out
    _still_serves(server)


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_lone_surrogates_are_400(server, path):
    raw = json.dumps(ROUTES[path]("hi \ud800 there")).encode()  # json.dumps escapes it as \ud800
    assert b"\\ud800" in raw
    status, out = _post_raw(server, path, raw)
    assert status == 400 and "lone UTF-16 surrogate" in _message(out), out
    # a valid pair (an emoji written as two escapes) is a character: served
    status, out = _post_raw(server, path, json.dumps(ROUTES[path]("hi \U0001f600")).encode())
    assert status == 200, out
    _still_serves(server)


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_bad_bytes_and_deep_nesting_are_400(server, path):
    status, out = _post_raw(server, path, b"[" * 50_000 + b"]" * 50_000)
    assert status == 400 and "too deeply" in _message(out), out
    status, out = _post_raw(server, path, b'{"text": "hi \xff\xfe"}')
    assert status == 400 and "not valid UTF-8" in _message(out), out
    status, out = _post_raw(server, path, b'{"text": ')
    assert status == 400 and "not valid JSON" in _message(out), out
    _still_serves(server)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_cache_salt_on_openai_routes(server, path):
    """A prompt cached under one salt gives no cached tokens to another salt (or none)."""
    text = "The quick brown fox jumps over the lazy dog. " * 6

    def cached(salt):
        body = ROUTES[path](text)
        if salt is not None:
            body["cache_salt"] = salt
        status, out = _post_raw(server, path, json.dumps(body).encode())
        assert status == 200, out
        return out["usage"]["prompt_tokens_details"]["cached_tokens"]

    cached(f"{path}-a")
    hit = cached(f"{path}-a")
    assert hit > 20  # the same tenant hits its own cache
    assert cached(f"{path}-b") == 0  # another tenant does not
    # nor the unsalted namespace (which may share a BOS or the chat template's head with others)
    assert cached(None) < hit // 2
    status, out = _post_raw(
        server, path, json.dumps({**ROUTES[path](text), "cache_salt": 5}).encode()
    )
    assert status == 400 and out["error"]["param"] == "cache_salt"


def test_bearer_scheme_in_any_case(start_server):
    s = start_server("--api-key", "sekret")
    body = json.dumps(ROUTES["/v1/completions"]("Once")).encode()
    for header in ("Bearer sekret", "bearer sekret", "BEARER sekret"):
        assert _post_raw(s, "/v1/completions", body, {"Authorization": header})[0] == 200
    for header in ("Bearer wrong", "Basic sekret", "sekret", "Bearer"):
        assert _post_raw(s, "/v1/completions", body, {"Authorization": header})[0] == 401
    assert _post_raw(s, "/v1/completions", body)[0] == 401


@pytest.fixture(scope="module")
def small_body_server(start_server):
    return start_server("--max-request-bytes", "1048576")


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_body_limit_is_413(small_body_server, path):
    s = small_body_server
    big = json.dumps(ROUTES[path]("word " * 400_000)).encode()  # 2 MB
    status, out = _post_raw(s, path, big)
    assert status == 413 and "--max-request-bytes" in _message(out), out
    # without a Content-Length (chunked upload) the limit holds as the bytes arrive
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))
    conn.request("POST", path, body=chunks, headers={"Content-Type": "application/json"},
                 encode_chunked=True)  # fmt: skip
    resp = conn.getresponse()
    assert resp.status == 413 and b"--max-request-bytes" in resp.read()
    conn.close()
    _still_serves(s)


def test_impossible_prompt_is_refused_before_tokenizing(small_body_server):
    """A prompt longer than the context could hold in any tokenization is a 400 at once, and
    /health answers meanwhile."""
    import threading
    import time

    s = small_body_server
    body = json.dumps(ROUTES["/generate"]("x" * 900_000)).encode()
    result = {}
    worker = threading.Thread(target=lambda: result.update(r=_post_raw(s, "/generate", body)))
    t0 = time.monotonic()
    worker.start()
    status, _ = s.get("/health")
    assert status == 200 and time.monotonic() - t0 < 5
    worker.join(60)
    status, out = result["r"]
    assert status == 400 and "characters" in _message(out), out
    _still_serves(s)


def test_port_in_use_fails_before_loading():
    """The port is bound before the model loads: a busy port ends the start at once, with the
    reason, and the server never says it is ready."""
    import socket
    import subprocess
    import sys
    import time

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "radixlm.launch_server", "--port", str(port)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        elapsed = time.monotonic() - t0
    finally:
        holder.close()
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    assert "the port is in use" in log and "ready" not in log, log[-2000:]
    assert "spawned scheduler" not in log  # nothing was started, let alone loaded
    assert elapsed < 60


@pytest.mark.parametrize(
    "constraint",
    [{"regex": "(a{1000}){1000}"}, {"ebnf": 'root ::= "a" root'}],
    ids=["regex-over-lexer-limit", "ebnf-without-end"],
)
def test_a_constraint_over_the_matcher_limits_fails_alone(server, constraint):
    """The matcher accepts the first token, then hits a limit of its own: that request is a
    400 naming the limit; the scheduler (and every other request) goes on."""
    body = {"text": "Once upon a time", "sampling_params": {"max_new_tokens": 4, **constraint}}
    status, out = _post_raw(server, "/generate", json.dumps(body).encode())
    assert status == 400 and "cannot be followed" in _message(out), out
    assert "simplify it" in _message(out)
    _still_serves(server)


@pytest.mark.parametrize("key", ["²", "--5", "¹"])
def test_logit_bias_keys_that_are_not_ascii_integers_are_400(server, key):
    for path, make in ROUTES.items():
        body = make("Once upon a time")
        target = body["sampling_params"] if path == "/generate" else body
        target["logit_bias"] = {key: 1}
        status, out = _post_raw(server, path, json.dumps(body).encode())
        assert status == 400 and "not an integer token id" in _message(out), (path, out)
    _still_serves(server)


def test_logit_bias_values_that_overflow_are_400(server):
    for path, make in ROUTES.items():
        body = make("Once upon a time")
        target = body["sampling_params"] if path == "/generate" else body
        target["logit_bias"] = {"5": 1e39}
        status, out = _post_raw(server, path, json.dumps(body).encode())
        assert status == 400 and "outside [-1e+06, 1e+06]" in _message(out), (path, out)


@pytest.mark.parametrize("path", ["/generate", "/v1/completions", "/v1/chat/completions", "/nope"])
def test_routing_errors_have_the_error_shape(server, path):
    req = urllib.request.Request(server.url + path, method="GET")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    body = json.loads(e.value.read())
    assert e.value.code == (404 if path == "/nope" else 405)
    assert "/docs" in _message(body) and "detail" not in body


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_50mb_body_is_413_while_health_answers(server, chunked):
    """While a 50 MB body is refused (read and dropped as it arrives, never held), /health keeps
    answering and the main process's memory stays where it was."""
    import socket
    import threading
    import time

    rss_before = _rss_mb(server.proc.pid)
    latencies: list[float] = []
    statuses: list[int] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            t = time.monotonic()
            statuses.append(server.get("/health")[0])
            latencies.append(time.monotonic() - t)
            time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    total, piece = 50 * 1024 * 1024, b"x" * (1024 * 1024)
    s = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    head = b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if chunked:
        s.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
    else:
        s.sendall(head + f"Content-Length: {total}\r\n\r\n".encode())
    try:
        for _ in range(total // len(piece)):
            s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            s.sendall(b"0\r\n\r\n")
    except OSError:
        pass  # the server may close once it has drained its share
    reply = b""
    while b"max-request-bytes" not in reply:
        chunk = s.recv(65536)
        if not chunk:
            break
        reply += chunk
    reply = reply.decode(errors="replace")
    s.close()
    stop.set()
    prober.join(30)
    assert reply.startswith("HTTP/1.1 413"), reply[:200]
    assert "--max-request-bytes" in reply
    assert set(statuses) == {200}, statuses
    assert latencies and max(latencies) < 1.0, sorted(latencies)[-5:]  # < 0.1 s when idle
    assert _rss_mb(server.proc.pid) - rss_before < 40, (rss_before, _rss_mb(server.proc.pid))
    _still_serves(server)


@pytest.mark.parametrize("stream", [False, True])
def test_ignored_openai_fields_are_reported(server, stream):
    """Fields a route does not read are served around, but named in X-Ignored-Fields (a typo
    such as max_token shows), never dropped silently; none for a clean body."""
    cases = {
        "/v1/completions": ({"max_token": 3, "user": "u1"}, "max_token, user"),
        "/v1/chat/completions": ({"temprature": 0.5}, "temprature"),
    }
    for path, (extra, expected) in cases.items():
        body = {**ROUTES[path]("Once upon a time"), "stream": stream}
        for fields, header in ((extra, expected), ({}, None)):
            req = urllib.request.Request(
                server.url + path, data=json.dumps({**body, **fields}).encode(), method="POST"
            )
            req.add_header("Content-Type", "application/json")
            with urllib.request.urlopen(req, timeout=120) as resp:
                assert resp.status == 200
                assert resp.headers.get("X-Ignored-Fields") == header, (path, fields)
                resp.read()


def test_fuzz_found_5xx_are_4xx_now(server):
    """Found by the OpenAPI fuzz: an echo of out-of-vocabulary token ids, a non-string model,
    and ignored field names that cannot go into a header as they are."""
    status, out = _post_raw(server, "/v1/completions", json.dumps(
        {"prompt": [99999999999999], "echo": True, "max_tokens": 1}).encode())  # fmt: skip
    assert status == 400 and "outside the vocabulary" in _message(out), out
    assert out["error"]["param"] == "prompt"
    for model in ([], {}):
        body = {"prompt": "hi", "max_tokens": 1, "model": model}
        status, out = _post_raw(server, "/v1/completions", json.dumps(body).encode())
        assert status == 400 and "model must be a string" in _message(out), out
    for name, shown in (("€", "%E2%82%AC"), ("a\r\nX-Evil: 1", "a%0D%0AX-Evil%3A%201"),
                        ("a ", "a%20")):  # fmt: skip
        body = {"prompt": "hi", "max_tokens": 1, name: 1}
        req = urllib.request.Request(server.url + "/v1/completions",
                                     data=json.dumps(body).encode(), method="POST")  # fmt: skip
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 200 and resp.headers["X-Ignored-Fields"] == shown
            assert resp.headers.get("X-Evil") is None
    _still_serves(server)


def test_sampling_values_that_overflow_float32_logits_are_400(server):
    for sp in ({"regex": "ii", "repetition_penalty": 1e-40}, {"regex": "0", "temperature": 1e300}):
        body = {"text": "i", "sampling_params": {"max_new_tokens": 4, **sp}}
        status, out = _post_raw(server, "/generate", json.dumps(body).encode())
        assert status == 400 and "float32 logits" in _message(out), out
