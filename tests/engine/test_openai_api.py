"""The OpenAI router end to end: uvicorn on loopback, the real ``openai`` SDK, and a backend that
wraps the in-process ``radixlm.Engine`` (bundled stories260K model)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import radixlm
from radixlm.server.chat_template import render_chat, resolve_chat_template

openai = pytest.importorskip("openai")
fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

MODEL = "stories260K"
STORY = "Once upon a time, there was a little girl named Lily. She loved to"
CHAT = [{"role": "user", "content": "Tell me a story about a cat."}]


class EngineBackend:
    """GenerateBackend over a synchronous Engine: every engine call runs on one worker thread
    (the Engine is not thread-safe); closing a stream closes the engine iterator (abort)."""

    def __init__(self, engine: radixlm.Engine) -> None:
        self.engine = engine
        self.served_model_name = MODEL
        self.model_names = [MODEL]
        self.tokenizer = engine.tokenizer
        self.context_length = engine.get_server_info()["context_length"]
        self.chat_template = resolve_chat_template(engine.tokenizer, None)
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.closed_early = 0  # streams closed before their last chunk

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn`` on the engine thread (for tests reading the engine directly)."""
        return self.pool.submit(fn, *args).result()

    def check_model(self, model: Any) -> None:
        if model not in (None, MODEL, "default"):
            from radixlm.server.server_errors import ModelNotFound

            raise ModelNotFound(model, self.model_names)

    async def generate(self, obj: dict[str, Any], tenant: str | None = None):
        kwargs = dict(obj)
        prompt = kwargs.pop("text", None)
        loop = asyncio.get_running_loop()
        finished = False
        try:
            out = await loop.run_in_executor(
                self.pool, lambda: self.engine.generate(prompt=prompt, **kwargs)
            )
            if not obj.get("stream"):
                finished = True
                yield out
                return
            while (chunk := await loop.run_in_executor(self.pool, next, out, None)) is not None:
                yield chunk
            finished = True
        finally:
            if not finished:
                self.closed_early += 1
                if obj.get("stream"):  # aborts unfinished requests, on the engine thread
                    self.pool.submit(out.close)


@pytest.fixture(scope="module")
def server():
    from radixlm.server.openai_api import create_openai_router

    engine = radixlm.Engine(max_total_tokens=4096)
    backend = EngineBackend(engine)
    app = fastapi.FastAPI()
    app.include_router(create_openai_router(lambda: backend))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started:
        assert time.time() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield backend, port
    srv.should_exit = True
    thread.join(10)
    backend.call(engine.scheduler.check_memory_invariants)
    backend.pool.shutdown()
    engine.shutdown()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server[1]}/v1", api_key="x", max_retries=0)


def post_raw(port: int, path: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].owned_by == "radixlm"
    assert models.data[0].model_extra["max_model_len"] == 512


def test_greedy_chat_and_completion_match_engine(server, client):
    backend, _ = server
    chat = client.chat.completions.create(model=MODEL, messages=CHAT, temperature=0, max_tokens=24)
    ids = render_chat(backend.chat_template, backend.tokenizer, CHAT)
    sp = {"temperature": 0, "max_new_tokens": 24, "stop": list(backend.chat_template.stop)}
    ref = backend.call(lambda: backend.engine.generate(input_ids=ids, sampling_params=sp))
    assert chat.object == "chat.completion" and chat.id.startswith("chatcmpl-")
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == ref["text"]
    assert chat.usage.prompt_tokens == len(ids)
    assert chat.usage.completion_tokens == len(ref["output_ids"])

    comp = client.completions.create(model="default", prompt=STORY, temperature=0, max_tokens=20)
    sp = {"temperature": 0, "max_new_tokens": 20}
    ref = backend.call(lambda: backend.engine.generate(STORY, sp))
    assert comp.model == MODEL and comp.object == "text_completion"
    assert comp.choices[0].text == ref["text"]
    assert comp.choices[0].finish_reason == "length"
    assert comp.usage.total_tokens == comp.usage.prompt_tokens + 20


def test_cached_tokens_on_repeated_prompt(client):
    prompt = STORY + " play with her red ball in the park every day."
    client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=2)
    again = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=2)
    assert again.usage.prompt_tokens_details.cached_tokens >= again.usage.prompt_tokens - 1


def test_chat_stream_reassembles_to_non_stream_text(client):
    args = dict(model=MODEL, messages=CHAT, temperature=0, max_tokens=30)
    full = client.chat.completions.create(**args)
    chunks = list(
        client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == full.choices[0].finish_reason and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == (
        full.usage.completion_tokens
    )


def test_completion_n2_seed_stream_matches_non_stream(server, client):
    args = dict(model=MODEL, prompt=STORY, n=2, seed=7, temperature=1.0, max_tokens=16)
    full = client.completions.create(**args)
    assert [c.index for c in full.choices] == [0, 1]
    texts = {0: "", 1: ""}
    for chunk in client.completions.create(**args, stream=True):
        for c in chunk.choices:
            texts[c.index] += c.text
    assert [texts[0], texts[1]] == [c.text for c in full.choices]
    assert texts[0] != texts[1]  # each sample has its own seed stream
    # the prompt is counted once for both samples
    assert full.usage.prompt_tokens == len(server[0].tokenizer.encode(STORY))
    assert full.usage.completion_tokens == 32


def test_logprobs(client):
    comp = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=4, temperature=0, logprobs=3, echo=True
    )
    lp = comp.choices[0].logprobs
    n_prompt = comp.usage.prompt_tokens
    assert comp.choices[0].text.startswith("Once upon a time")
    assert len(lp.tokens) == len(lp.token_logprobs) == n_prompt + 4
    assert lp.token_logprobs[0] is None and all(x <= 0 for x in lp.token_logprobs[1:])
    assert all(1 <= len(t) <= 3 for t in lp.top_logprobs[1:])
    assert lp.text_offset == sorted(lp.text_offset)

    chat = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 2
        # greedy: the sampled token is the most likely one
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-5)
        assert bytes(entry.bytes).decode() == entry.token


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"temperature": -1}, "temperature"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "--tool-call-parser"),
        ({"n": 0}, "n must be"),
        ({"messages": [{"role": "bot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": []}, "messages must be a non-empty list"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "objekt"}},
                }
            },
            "json_schema",
        ),
    ],
)
def test_chat_bad_requests(client, kwargs, needle):
    args = {"model": MODEL, "messages": CHAT, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**args)
    assert needle in info.value.message
    assert info.value.body["type"] == "invalid_request_error" and info.value.body["code"] == 400


def test_raw_errors_have_openai_shape(server):
    port = server[1]
    status, body = post_raw(port, "/v1/chat/completions", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = post_raw(port, "/v1/completions", b"[1, 2]")
    assert status == 400 and "JSON object" in body["error"]["message"]
    status, body = post_raw(port, "/v1/completions", json.dumps({"prompt": 5}).encode())
    assert status == 400 and body["error"]["param"] == "prompt"
    status, body = post_raw(
        port, "/v1/completions", json.dumps({"prompt": "Hi", "max_tokens": "ten"}).encode()
    )
    assert status == 400 and body["error"] == {
        "message": "max_tokens must be an integer, got 'ten'",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": 400,
    }


def test_client_disconnect_aborts_stream(server):
    backend, port = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = {"prompt": STORY, "max_tokens": None, "ignore_eos": True, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
    assert resp.readline().startswith(b"data: {")
    before = backend.closed_early
    conn.close()  # the client goes away mid-stream
    deadline = time.time() + 10
    while backend.closed_early == before:
        assert time.time() < deadline, "the backend stream was not closed on disconnect"
        time.sleep(0.02)
    # the engine aborted the request: nothing is left running
    backend.call(lambda: None)
    assert backend.call(lambda: len(backend.engine.scheduler.reqs)) == 0


def test_batch_of_token_id_prompts(client):
    out = client.completions.create(model=MODEL, prompt=[[1, 403], [1, 500, 7]], max_tokens=3)
    assert [c.index for c in out.choices] == [0, 1]
    assert out.usage.prompt_tokens == 5 and out.usage.completion_tokens <= 6


def test_raw_sse_format(server):
    port = server[1]
    body = {
        "prompt": "Hi",
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = r.read().decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


def test_abort_mid_stream_is_an_error_event(server, client):
    backend, _ = server
    stream = client.completions.create(
        model=MODEL,
        prompt=STORY,
        max_tokens=None,
        stream=True,
        extra_body={"rid": "abort-me", "ignore_eos": True},
    )
    next(iter(stream))
    backend.call(backend.engine.abort_request, "abort-me")
    with pytest.raises(openai.APIError, match="aborted"):
        for _ in stream:
            pass


def test_client_disconnect_aborts_non_stream_wait(server):
    backend, port = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    # n=16 samples to the end of the context: seconds of work, so the engine call is still
    # running when the client leaves (one sample takes ~0.3 s on the native kernels)
    body = {"prompt": STORY, "max_tokens": None, "ignore_eos": True, "n": 16}
    before = backend.closed_early
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    time.sleep(0.2)
    conn.close()
    deadline = time.time() + 10
    while backend.closed_early == before:
        assert time.time() < deadline, "the backend call was not cancelled on disconnect"
        time.sleep(0.02)
    backend.call(lambda: None)  # the synchronous engine call finishes on its own
