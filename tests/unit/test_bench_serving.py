"""``bench/serving.py`` against a fake streaming server (FastAPI + uvicorn on loopback, so bodies
arrive with uvicorn's real chunked encoding): native and OpenAI streaming, token counts, TTFT /
ITL bookkeeping, HTTP and in-stream errors, concurrency limit, server counters; plus the metric
arithmetic, the chunked/SSE parser on awkward chunk boundaries and the dataset builders."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # bench scripts import ``common`` as a top-level module
_spec = importlib.util.spec_from_file_location("bench_serving", BENCH / "serving.py")
serving = importlib.util.module_from_spec(_spec)
sys.modules["bench_serving"] = serving
_spec.loader.exec_module(serving)

FIRST_DELAY, CHUNK_DELAY = 0.02, 0.005
MAX_TOKENS = 50  # the fake answers HTTP 400 above this


class WordTokenizer:
    """Token ``i`` is the word ``w{i}``; text is space-separated words."""

    vocab_size = 1000
    all_special_ids = [0]

    def encode(self, text: str, **kwargs) -> list[int]:
        return [int(w[1:]) if w[1:].isdigit() else 1 for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        return "".join(f" w{i}" for i in ids)


# ---- the fake server ------------------------------------------------------------------------
def _make_app(stats: dict[str, int]):
    app = FastAPI()

    def too_many(n: int) -> JSONResponse | None:
        if n <= MAX_TOKENS:
            return None
        message = f"max tokens {n} exceeds {MAX_TOKENS}"
        return JSONResponse({"error": {"message": message}}, status_code=400)

    async def sse(events: list[dict]):
        """One event per token after small delays; each token's text is two words, so a
        tokenizer count (2n) differs from the server's count (n)."""
        stats["inflight"] += 1
        stats["max_inflight"] = max(stats["max_inflight"], stats["inflight"])
        try:
            await asyncio.sleep(FIRST_DELAY)
            for i, event in enumerate(events):
                if i:
                    await asyncio.sleep(CHUNK_DELAY)
                yield f"data: {json.dumps(event)}\n\n"
        finally:
            stats["inflight"] -= 1
            stats["finished"] += 1
        yield "data: [DONE]\n\n"

    def stream(events: list[dict]) -> StreamingResponse:
        return StreamingResponse(sse(events), media_type="text/event-stream")

    @app.post("/generate")
    async def generate(request: Request):
        body = await request.json()
        n = body["sampling_params"]["max_new_tokens"]
        if (error := too_many(n)) is not None:
            return error
        texts = [" ".join(f"t{j} x" for j in range(i + 1)) for i in range(n)]
        events = [
            {"text": t, "meta_info": {"completion_tokens": i + 1}} for i, t in enumerate(texts)
        ]
        if "fail-mid-stream" in body["text"]:
            events = events[:1] + [{"error": {"message": "boom"}}]
        return stream(events)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        if (error := too_many(body["max_tokens"])) is not None:
            return error
        events = [{"choices": [{"text": f" t{i} x"}]} for i in range(body["max_tokens"])]
        if "no-usage" not in body["prompt"]:
            events.append({"choices": [], "usage": {"completion_tokens": body["max_tokens"]}})
        return stream(events)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        n = body["max_completion_tokens"]
        if (error := too_many(n)) is not None:
            return error
        events = [{"choices": [{"delta": {"role": "assistant"}}]}]  # no content: not a token
        events += [{"choices": [{"delta": {"content": f" t{i} x"}}]} for i in range(n)]
        events.append({"choices": [], "usage": {"completion_tokens": n}})
        return stream(events)

    @app.get("/health")
    async def health():
        return {}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}

    @app.get("/get_server_info")
    async def server_info():
        done = stats["finished"]
        state = {
            "cpu_seconds_outside_forward": 0.002 * done,
            "forward_seconds": 0.01 * done,
            "num_finished_requests": done,
        }
        return {"internal_states": [state]}

    return app


@pytest.fixture(scope="module")
def fake_server():
    stats = {"inflight": 0, "max_inflight": 0, "finished": 0}
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(_make_app(stats), log_level="error", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "the fake server did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", stats
    server.should_exit = True
    thread.join(5)
    sock.close()


def _requests(*output_lens: int, prompt: str = "hello there") -> list:
    return [serving.SampleRequest(f"{prompt} {i}", 3, n) for i, n in enumerate(output_lens)]


def _run(url: str, backend: str, requests: list, **kwargs):
    target = serving.Target(url, backend, model="fake-model", timeout=10)
    return asyncio.run(serving.run_benchmark(target, requests, tokenizer=WordTokenizer(), **kwargs))


# ---- against the fake server ----------------------------------------------------------------
@pytest.mark.parametrize("backend", ["radixlm", "sglang", "openai", "openai-chat"])
def test_streaming_backends(fake_server, backend):
    url, _ = fake_server
    lens = (3, 5, 2, 4)
    run = _run(url, backend, _requests(*lens))
    assert [r.error for r in run.results] == [""] * len(lens)
    for r, n in zip(run.results, lens):
        assert r.success and r.output_tokens_from_server
        assert r.output_tokens == n  # the server's count, not the tokenizer's (2n words)
        assert len(r.itl) == n - 1  # one gap between each pair of chunks with text
        assert 0 < r.ttft < r.latency
        assert r.ttft >= FIRST_DELAY * 0.9  # the fake sleeps before its first chunk
        assert r.generated_text == "".join(f" t{i} x" for i in range(n)).removeprefix(
            " " if backend in ("radixlm", "sglang") else ""
        )
    summary = serving.summarize(run.results, run.duration)
    assert summary["completed"] == len(lens) and summary["failed"] == 0
    assert summary["total_output_tokens"] == sum(lens)
    assert summary["output_len_mismatches"] == 0
    assert summary["mean_ttft_ms"] < summary["mean_e2e_ms"]


def test_tokenizer_count_without_usage(fake_server):
    url, _ = fake_server
    run = _run(url, "openai", _requests(4, prompt="no-usage"))
    (r,) = run.results
    assert r.success and not r.output_tokens_from_server
    assert r.output_tokens == 8  # the tokenizer's count of " t0 x t1 x ..."


def test_http_400_and_error_event_are_failures(fake_server):
    url, _ = fake_server
    requests = _requests(3, MAX_TOKENS + 1) + _requests(2, prompt="fail-mid-stream")
    for backend in ("radixlm", "openai", "openai-chat"):
        run = _run(url, backend, requests[:2])
        ok, bad = run.results
        assert ok.success
        assert not bad.success and bad.error == f"HTTP 400: max tokens {MAX_TOKENS + 1} exceeds 50"
        summary = serving.summarize(run.results, run.duration)
        assert (summary["completed"], summary["failed"]) == (1, 1)
        assert summary["errors"] == {bad.error: 1}
    (mid,) = _run(url, "radixlm", requests[2:], warmup_requests=0).results
    assert not mid.success and mid.error == "error event: boom"


def test_warmup_failure_raises(fake_server):
    url, _ = fake_server
    with pytest.raises(RuntimeError, match="warm-up request failed: error event: boom"):
        _run(url, "radixlm", _requests(3, prompt="fail-mid-stream"))


def test_concurrency_limit_poisson_and_server_counters(fake_server):
    url, stats = fake_server
    stats["max_inflight"] = 0
    run = _run(url, "radixlm", _requests(*[3] * 6), max_concurrency=2, request_rate=500.0)
    assert all(r.success for r in run.results)
    assert stats["max_inflight"] == 2
    # Counter deltas cover the 6 measured requests, not the warm-up one.
    assert run.server["num_finished_requests"] == 6
    assert run.server["cpu_ms_outside_forward_per_request"] == pytest.approx(2.0)
    assert run.server["forward_seconds"] == pytest.approx(0.06)


def test_resolve_model_and_missing_endpoints(fake_server):
    url, _ = fake_server
    target = serving.Target(url, "openai")
    assert asyncio.run(serving.resolve_model(target)) == "fake-model"
    assert asyncio.run(serving.get_json(target, "/nope")) is None
    closed = serving.Target(f"http://127.0.0.1:{serving.free_port()}", "openai")
    assert asyncio.run(serving.resolve_model(closed)) == "default"
    assert asyncio.run(serving.internal_states(closed)) is None
    assert serving.states_delta(None, None, 3) == {}


def test_connection_refused_is_a_failure():
    target = serving.Target(f"http://127.0.0.1:{serving.free_port()}", "radixlm", timeout=5)
    result = asyncio.run(serving.send_request(target, _requests(2)[0]))
    assert not result.success and "ConnectionRefusedError" in result.error


# ---- HTTP / SSE parsing on awkward chunk boundaries -----------------------------------------
async def _raw_exchange(raw: bytes) -> tuple[int, list[str]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()).strip():  # request line + headers; no body on GET
            pass
        for i in range(0, len(raw), 7):  # dribble the response out in 7-byte writes
            writer.write(raw[i : i + 7])
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        response = await serving.http_request(f"http://127.0.0.1:{port}/x")
        try:
            events = [e async for e in serving.iter_sse_data(response.iter_body())]
        finally:
            response.close()
    return response.status, events


def test_chunked_sse_with_split_lines_extensions_and_trailers():
    body = 'data: {"text": "héllo"}\r\n\r\n: comment\ndata: a\ndata: b\n\ndata: [DONE]\n\n'.encode()
    cut = body.index("é".encode()) + 1  # a chunk boundary inside a multi-byte character
    parts = [body[:cut], body[cut : cut + 9], body[cut + 9 :]]
    chunked = b"".join(f"{len(p):x};ext=1\r\n".encode() + p + b"\r\n" for p in parts)
    raw = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\nX-Trailer: 1\r\n\r\n"
    )
    status, events = asyncio.run(_raw_exchange(raw))
    assert status == 200
    assert events == ['{"text": "héllo"}', "a\nb", "[DONE]"]


def test_content_length_body_and_truncation():
    raw = b'HTTP/1.1 400 Bad Request\r\nContent-Length: 27\r\n\r\n{"detail": "bad sampling"}\n'
    assert asyncio.run(_raw_exchange(raw)) == (400, [])
    assert serving.error_message(raw.split(b"\r\n\r\n")[1]) == "bad sampling"
    assert serving.error_message(b"plain text ") == "plain text"
    with pytest.raises(ConnectionError):
        asyncio.run(_raw_exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\ndata: x\n\n"))


# ---- metrics --------------------------------------------------------------------------------
def test_summarize_known_values():
    R = serving.RequestResult
    results = [
        R(True, "", 10, 5, 5, True, ttft=0.1, itl=[0.1] * 4, latency=0.5),
        R(True, "", 20, 3, 3, True, ttft=0.3, itl=[0.2, 0.2], latency=0.7),
        R(True, "", 30, 4, 1, True, ttft=0.2, itl=[], latency=0.2),  # 1 token: no TPOT
        R(False, "HTTP 400: no", 99, 9),
    ]
    s = serving.summarize(results, duration=2.0)
    approx = pytest.approx
    assert (s["completed"], s["failed"], s["output_len_mismatches"]) == (3, 1, 1)
    assert (s["total_input_tokens"], s["total_output_tokens"]) == (60, 9)
    assert s["request_throughput"] == approx(1.5)
    assert s["input_throughput"] == approx(30.0)
    assert s["output_throughput"] == approx(4.5)
    assert s["total_token_throughput"] == approx(34.5)
    # numpy-style linear interpolation: p99 of [100, 200, 300] = 200 + 0.98 * 100
    assert (s["mean_ttft_ms"], s["median_ttft_ms"], s["p99_ttft_ms"]) == approx((200, 200, 298))
    # TPOT: (0.5 - 0.1) / 4 = 100 ms, (0.7 - 0.3) / 2 = 200 ms
    assert (s["mean_tpot_ms"], s["median_tpot_ms"], s["p99_tpot_ms"]) == approx((150, 150, 199))
    assert (s["mean_itl_ms"], s["median_itl_ms"], s["p99_itl_ms"]) == approx((400 / 3, 100, 200))
    assert (s["mean_e2e_ms"], s["median_e2e_ms"], s["p99_e2e_ms"]) == approx((1400 / 3, 500, 696))
    assert s["errors"] == {"HTTP 400: no": 1}
    empty = serving.summarize([R(False, "x")], duration=0.0)
    assert empty["mean_itl_ms"] is None and empty["p99_e2e_ms"] is None
    assert empty["request_throughput"] == 0.0


def test_percentile_matches_numpy_linear():
    np = pytest.importorskip("numpy")
    values = [random.Random(1).random() for _ in range(37)]
    for q in (0, 1, 50, 90, 99, 100):
        assert serving.percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert serving.percentile([], 50) is None


def test_arrival_times():
    assert serving.arrival_times(3, math.inf, random.Random(0)) == [0.0, 0.0, 0.0]
    times = serving.arrival_times(2000, 100.0, random.Random(0))
    assert times[0] == 0.0 and times == sorted(times)
    assert times == serving.arrival_times(2000, 100.0, random.Random(0))
    assert times[-1] / 1999 == pytest.approx(0.01, rel=0.1)  # mean gap 1 / rate


# ---- datasets -------------------------------------------------------------------------------
def test_sharegpt_filtering(tmp_path):
    def conv(prompt_words: int, reply_words: int | None) -> dict:
        turns = [{"from": "human", "value": " ".join(["w5"] * prompt_words)}]
        if reply_words is not None:
            turns.append({"from": "gpt", "value": " ".join(["w6"] * reply_words)})
        return {"id": "x", "conversations": turns}

    data = [conv(10, 20), conv(3, 20), conv(10, 3), conv(1100, 5), conv(1000, 1100), conv(8, None)]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    tok = WordTokenizer()
    got = serving.sharegpt_requests(path, tok, 1, None, seed=0)
    assert [(r.prompt_len, r.output_len) for r in got] == [(10, 20)]
    fixed = serving.sharegpt_requests(path, tok, 4, 7, seed=0)  # fixed length: replies optional
    assert sorted((r.prompt_len, r.output_len) for r in fixed) == [
        (8, 7),
        (10, 7),
        (10, 7),
        (1000, 7),
    ]
    with pytest.raises(ValueError, match="pass --sharegpt-output-len"):
        serving.sharegpt_requests(path, tok, 2, None, seed=0)


def test_random_and_shared_prefix_datasets():
    tok = WordTokenizer()
    fixed = serving.random_requests(tok, 5, 12, 7, 1.0, seed=0)
    assert [(r.prompt_len, r.output_len) for r in fixed] == [(12, 7)] * 5
    assert all(0 not in tok.encode(r.prompt) for r in fixed)  # no special tokens
    ranged = serving.random_requests(tok, 50, 12, 8, 0.5, seed=0)
    assert all(6 <= r.prompt_len <= 12 and 4 <= r.output_len <= 8 for r in ranged)
    assert ranged == serving.random_requests(tok, 50, 12, 8, 0.5, seed=0)

    gsp = serving.shared_prefix_requests(tok, 3, 4, 10, 5, 6, seed=0)
    assert len(gsp) == 12 and all(r.prompt_len == 15 and r.output_len == 6 for r in gsp)
    order = [" ".join(r.prompt.split()[:10]) for r in gsp]  # each prompt's system prompt
    groups = {
        system: {r.prompt for r in gsp if r.prompt.split()[:10] == system.split()}
        for system in order
    }
    assert sorted(len(q) for q in groups.values()) == [4, 4, 4]  # distinct questions per group
    assert len(set(order[:4])) > 1  # shuffled, not group by group


def test_cli_parses_and_builds_server_command(tmp_path):
    args = serving.parse_args(["--launch", "--num-threads", "2", "--server-args=--dtype bf16"])
    cmd = serving.server_command(args, tmp_path, 1234, 5000, overlap=False)
    assert cmd[1:3] == ["-m", "radixlm.launch_server"]
    assert cmd[3:] == [
        "--model-path", str(tmp_path), "--port", "1234", "--host", "127.0.0.1",
        "--num-threads", "2", "--max-total-tokens", "5000",
        "--disable-overlap-schedule", "--dtype", "bf16",
    ]  # fmt: skip
    on = serving.server_command(args, tmp_path, 1, 1, True)
    assert "--enable-overlap-schedule" in on and "--disable-overlap-schedule" not in on
    assert serving.parse_args(["--port", "8000"]).base_url == "http://127.0.0.1:8000"


# ---- --launch process handling --------------------------------------------------------------
HEALTH_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_launched_server_ready_then_stopped(tmp_path):
    port = serving.free_port()
    cmd = [sys.executable, "-c", HEALTH_SERVER, str(port)]
    url = f"http://127.0.0.1:{port}"

    async def health() -> int:
        response = await serving.http_request(url + "/health")
        response.close()
        return response.status

    with serving.launched_server(cmd, url, 10, tmp_path / "log"):
        assert asyncio.run(health()) == 200
    with pytest.raises(ConnectionRefusedError):  # stopped
        asyncio.run(health())


def test_launched_server_that_dies_exits_with_its_log(tmp_path):
    cmd = [sys.executable, "-c", "print('bad flag --nope'); raise SystemExit(3)"]
    with pytest.raises(SystemExit, match="(?s)exited with code 3.*bad flag --nope"):
        with serving.launched_server(cmd, "http://127.0.0.1:9", 10, tmp_path / "log"):
            pass


def test_stop_server_kills_after_sigterm_timeout():
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print(1, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    proc.stdout.readline()  # SIGTERM is ignored from here on
    serving.stop_server(proc, timeout=0.2)
    assert proc.returncode == -signal.SIGKILL
