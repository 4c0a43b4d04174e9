"""Who may call what (issue 16, items 5 and 6): admin routes, per-tenant API keys with their
own prefix-cache namespaces and counters, served model names, and request ids that reveal
nothing about other clients' requests."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time

import pytest

from radixlm.server.auth import AuthMiddleware
from tests.server.conftest import raw_post

PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play in the park"


@pytest.fixture(scope="module")
def keyed(start_server, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "api_keys.txt"
    keys.write_text("# key tenant\nkey-alice alice\nkey-bob bob\n\n")
    return start_server(
        "--api-key-file", str(keys), "--api-key", "key-plain", "--admin-api-key", "key-admin",
        "--served-model-name", "stories,story-alias", "--enable-metrics",
        "--metrics-compat", "sglang",
    )  # fmt: skip


def _as(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def _cached(server, key: str) -> int:
    body = {"text": PROMPT, "sampling_params": {"max_new_tokens": 1, "temperature": 0}}
    status, out = server.post("/generate", body, headers=_as(key))
    assert status == 200, out
    return out["meta_info"]["cached_tokens"]


def test_tenants_never_share_cached_prefixes(keyed):
    _cached(keyed, "key-alice")
    assert _cached(keyed, "key-alice") > 10  # a tenant hits its own cache
    assert _cached(keyed, "key-bob") == 0  # but never another tenant's
    assert _cached(keyed, "key-bob") > 10
    assert _cached(keyed, "key-plain") == 0  # --api-key: the shared namespace
    status, _ = keyed.post("/generate", {"text": "hi"}, headers=_as("key-nobody"))
    assert status == 401
    status, text = keyed.get("/metrics")
    for tenant, requests in (("alice", 2), ("bob", 2)):
        line = f'sglang:tenant_requests_total{{model_name="stories",tenant="{tenant}"}}'
        assert re.search(re.escape(line) + rf" {requests}(\.0)?\n", text), text[-2000:]
    prompt = re.search(
        r'sglang:tenant_prompt_tokens_total\{model_name="stories",tenant="alice"\} (\d+)', text
    )
    assert prompt and int(prompt.group(1)) > 20, text[-2000:]


def test_admin_routes_need_the_admin_key(keyed):
    for path in ("/flush_cache", "/abort_request"):
        for headers in ({}, _as("key-plain"), _as("key-alice")):
            status, out = keyed.post(path, {"rid": "x"}, headers=headers)
            assert status == 403 and "--admin-api-key" in out["error"]["message"], out
    assert keyed.post("/flush_cache", headers=_as("key-admin"))[0] == 200
    status, out = keyed.post("/abort_request", {"rid": "x"}, headers=_as("key-admin"))
    assert status == 200 and out == {"rid": "x", "aborted": False}
    # the admin key is not an API key for the other routes
    assert keyed.post("/generate", {"text": "hi"}, headers=_as("key-admin"))[0] == 401
    status, info = keyed.get("/get_server_info", headers=_as("key-plain"))
    assert (
        status == 200
        and "key-admin" not in json.dumps(info)
        and "key-plain" not in json.dumps(info)
    )


def _asgi_call(scope_client, admin_key=None, keys=None, path="/flush_cache") -> int:
    """Run AuthMiddleware on one request from ``scope_client``; the status it answers."""
    sent: list = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [],
             "client": scope_client}  # fmt: skip
    asyncio.run(AuthMiddleware(app, keys or {}, admin_key)(scope, receive, send))
    return sent[0]["status"]


def test_admin_routes_without_admin_key_are_loopback_only():
    assert _asgi_call(("127.0.0.1", 5000)) == 200
    assert _asgi_call(("::1", 5000)) == 200
    assert _asgi_call(("10.1.2.3", 5000)) == 403
    assert _asgi_call(("192.168.0.7", 5000), path="/abort_request") == 403
    assert _asgi_call(None) == 403  # unknown peer: not provably local
    assert _asgi_call(("10.1.2.3", 5000), path="/generate") == 200  # not an admin route


def test_unknown_model_is_404_and_aliases_work(keyed):
    c = {"prompt": "Once", "max_tokens": 2}
    status, out = keyed.post("/v1/completions", {**c, "model": "gpt-9"}, headers=_as("key-plain"))
    assert status == 404, out
    assert out["error"]["code"] == "model_not_found" and out["error"]["param"] == "model"
    assert "'gpt-9'" in out["error"]["message"] and "story-alias" in out["error"]["message"]
    for name in ("stories", "story-alias", "default", None):
        body = c if name is None else {**c, "model": name}
        status, out = keyed.post("/v1/completions", body, headers=_as("key-plain"))
        assert status == 200 and out["model"] == "stories", out
    status, out = keyed.get("/v1/models", headers=_as("key-plain"))
    assert [m["id"] for m in out["data"]] == ["stories", "story-alias"]


def test_a_reused_request_id_is_served_and_reveals_nothing(server):
    """Two live requests with the same client id both succeed (the first was still running
    when the second was answered), each reported under the id its client gave."""
    long = {"text": PROMPT, "rid": "same-id",
            "sampling_params": {"max_new_tokens": 480, "ignore_eos": True, "n": 32}}  # fmt: skip
    done: dict = {}

    def first() -> None:
        done["first"] = server.post("/generate", long)
        done["first_end"] = time.monotonic()

    t = threading.Thread(target=first)
    t.start()
    time.sleep(0.05)
    status, out = server.post(
        "/generate", {"text": "Hi", "rid": "same-id", "sampling_params": {"max_new_tokens": 2}}
    )
    second_end = time.monotonic()
    t.join(120)
    assert status == 200 and out["meta_info"]["id"] == "same-id", out
    assert done["first"][0] == 200
    assert [r["meta_info"]["id"] for r in done["first"][1]] == [f"same-id_{k}" for k in range(32)]
    assert done["first_end"] > second_end, "the first request was not live: no overlap tested"


def test_client_leaving_is_not_logged_as_a_server_error(server):
    body = {"model": "stories260K", "prompt": PROMPT, "max_tokens": 400, "stream": True,
            "ignore_eos": True, "n": 4}  # fmt: skip
    before = server.read_log()
    for _ in range(3):
        s = raw_post(server.port, "/v1/completions", body)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        s.close()
    server.wait_idle()
    new = server.read_log()[len(before) :] if server.read_log().startswith(before) else ""
    for marker in ("503", "server_error", "failed", "Traceback"):
        assert marker not in new, new


def test_group_abort_frees_every_sample(server):
    """A client that leaves an n=16 stream: the whole group is aborted, KV back to idle."""
    idle = server.wait_idle()["num_used_tokens"]
    body = {"text": PROMPT, "stream": True,
            "sampling_params": {"max_new_tokens": 480, "ignore_eos": True, "n": 16}}  # fmt: skip
    s = raw_post(server.port, "/generate", body)
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    s.shutdown(socket.SHUT_RDWR)
    s.close()
    stats = server.wait_idle()
    assert stats["num_used_tokens"] <= idle + len(PROMPT), stats
    json.dumps(stats)
