"""Soak test of the HTTP server: a bounded run of mixed, hostile load with exact-output checks.

Starts its own ``python -m radixlm.launch_server`` (the bundled stories260K model unless
``--model-path``), computes a reference output for every (prompt, route, max tokens) combination
with one non-streamed request at a time on the idle server, then runs ``--concurrency`` client
tasks for ``--duration`` seconds. Each client loops, drawing one of:

- a **good request** (most of the load): native ``/generate``, OpenAI ``/v1/completions`` or
  ``/v1/chat/completions``, streamed or not, greedy (``temperature: 0``), a prompt from
  ``PROMPTS`` and 8, 16 or 32 new tokens. Its text (streamed deltas joined, or the cumulative
  native text) must equal the reference exactly;
- a **disconnect** (``--disconnect-share``): a good streamed request whose connection is closed
  after its first 1-3 events;
- a **bad request** (``--bad-share``): one of ``BAD_REQUESTS`` (invalid JSON, unknown fields,
  negative max tokens, wrong types, ``n`` over ``--max-n``), which must be answered 4xx.

Meanwhile a separate process (so the clients' event loop does not delay it) probes
``GET /health`` every ``--health-interval`` seconds and records each latency. After the soak the
in-flight requests finish (at most ``--request-timeout`` each) and the server must become idle.

Reported (printed, ``--output-file`` JSON, the same text as .txt, a .png of latency over time
and of /health latency): good requests ok / errored and p50 / p99 latency per route kind, output
mismatches, bad requests answered 4xx / otherwise, disconnects done, /health p50 / p99 / max,
KV slots in use (``/get_server_info`` ``scheduler.num_used_tokens`` on the idle server) and
the RSS of the server's processes (main + children, from /proc) before and after.

Pass criteria (the exit code is 1 when any fails): every good request answered 2xx with no
transport error or timeout (a timeout is a hang), 0 output mismatches, every bad request
answered 4xx, KV in use back to its pre-soak value once the server is idle, every /health probe
200 within ``--health-stall`` seconds, and the server still running at the end.

    python bench/soak.py                       # 500 clients, 60 s, the bundled model
    python bench/soak.py --duration 10 --concurrency 50 --output-file /tmp/soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import multiprocessing
import os
import random
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common import MB, REPO_ROOT, Tee, environment, print_header
from serving import (
    HttpResponse,
    error_message,
    iter_sse_data,
    percentile,
    stop_server,
    wait_until_ready,
)

from radixlm_lang.backend.runtime_endpoint import free_port

HOST = "127.0.0.1"
PROMPTS = (
    "Once upon a time",
    "Lily saw a big dog",
    "Tom had a red ball. One day",
    "The sun was hot and",
    "Sam and his mom went to the park",
    "There was a little bird who",
    "Ben wanted to play with",
    "The cat was sad because",
)
MAX_TOKENS = (8, 16, 32)
ROUTES = {"native": "/generate", "completions": "/v1/completions", "chat": "/v1/chat/completions"}
KINDS = tuple(f"{route}{suffix}" for route in ROUTES for suffix in ("", "-stream"))


@dataclass(frozen=True)
class BadRequest:
    """A request the server must refuse with a 4xx: ``body`` is sent as is."""

    name: str
    path: str
    body: bytes


def _bad(name: str, path: str, body: Any) -> BadRequest:
    return BadRequest(name, path, body if isinstance(body, bytes) else json.dumps(body).encode())


_USER = [{"role": "user", "content": "Once upon a time"}]
BAD_REQUESTS = (
    _bad("invalid JSON", "/generate", b'{"text": "Once upon'),
    _bad("invalid JSON", "/v1/completions", b'{"prompt": "Once'),
    _bad("invalid JSON", "/v1/chat/completions", b'{"messages": [{'),
    _bad("not an object", "/v1/completions", []),
    _bad("unknown field", "/generate", {"text": "Once", "foo": 1}),
    _bad("unknown sampling param", "/generate", {"text": "Once", "sampling_params": {"foo": 1}}),
    _bad("negative max_new_tokens", "/generate", {"text": "x", "sampling_params": {"max_new_tokens": -1}}),
    _bad("negative max_tokens", "/v1/completions", {"prompt": "x", "max_tokens": -1}),
    _bad("negative max_tokens", "/v1/chat/completions", {"messages": _USER, "max_tokens": -5}),
    _bad("negative max_tokens, stream", "/v1/chat/completions", {"messages": _USER, "max_tokens": -5, "stream": True}),
    _bad("wrong type", "/generate", {"text": 123}),
    _bad("wrong type", "/generate", {"text": "x", "sampling_params": {"temperature": "hot"}}),
    _bad("wrong type", "/v1/completions", {"prompt": "x", "max_tokens": "ten"}),
    _bad("wrong type", "/v1/completions", {"prompt": {"a": 1}}),
    _bad("wrong type", "/v1/chat/completions", {"messages": "hello"}),
    _bad("wrong type", "/v1/chat/completions", {"messages": _USER, "temperature": [1]}),
    _bad("n too large", "/generate", {"text": "x", "sampling_params": {"n": 1000}}),
    _bad("n too large, stream", "/generate", {"text": "x", "stream": True, "sampling_params": {"n": 1000}}),
    _bad("n too large", "/v1/completions", {"prompt": "x", "n": 1000}),
    _bad("n too large", "/v1/chat/completions", {"messages": _USER, "n": 65}),
)  # fmt: skip


# ---- HTTP -----------------------------------------------------------------------------------
async def send(port: int, method: str, path: str, body: bytes | None = None) -> HttpResponse:
    """Send one request with a raw body on a new connection; return once headers are read."""
    reader, writer = await asyncio.open_connection(HOST, port)
    response = HttpResponse(reader, writer)
    try:
        head = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", "Connection: close"]
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b""))
        await writer.drain()
        await response.read_head()
    except BaseException:
        response.close()
        raise
    return response


async def get_json(port: int, path: str) -> Any:
    response = await asyncio.wait_for(send(port, "GET", path), 30)
    try:
        data = await asyncio.wait_for(response.read(), 30)
        if response.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status}: {error_message(data)}")
        return json.loads(data)
    finally:
        response.close()


# ---- good requests --------------------------------------------------------------------------
@dataclass(frozen=True)
class Good:
    route: str  # a key of ROUTES
    prompt: str
    max_tokens: int
    stream: bool

    @property
    def kind(self) -> str:
        return self.route + ("-stream" if self.stream else "")

    @property
    def key(self) -> tuple[str, str, int]:
        """Which reference the output must equal (streamed or not, the text is the same)."""
        return self.route, self.prompt, self.max_tokens

    def body(self) -> bytes:
        if self.route == "native":
            params = {"temperature": 0, "max_new_tokens": self.max_tokens}
            return json.dumps(
                {"text": self.prompt, "sampling_params": params, "stream": self.stream}
            ).encode()
        body: dict[str, Any] = {
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "stream": self.stream,
        }
        if self.route == "chat":
            body["messages"] = [{"role": "user", "content": self.prompt}]
        else:
            body["prompt"] = self.prompt
        return json.dumps(body).encode()


def final_text(route: str, payload: Any) -> str:
    """The output text of a non-streamed response."""
    if route == "native":
        finish = payload["meta_info"]["finish_reason"]
        if finish and finish.get("type") == "abort":
            raise RuntimeError(f"aborted: {finish.get('message')}")
        return payload["text"]
    choice = payload["choices"][0]
    if route == "chat":
        return choice["message"]["content"] or ""
    return choice["text"]


def streamed_text(route: str, event: dict[str, Any], text: str) -> str:
    """The output text so far after one streamed event (native events carry the whole text)."""
    if "error" in event:
        raise RuntimeError(f"error event: {error_message(event)}")
    if route == "native":
        finish = event["meta_info"]["finish_reason"]
        if finish and finish.get("type") == "abort":
            raise RuntimeError(f"aborted: {finish.get('message')}")
        return event["text"]
    choices = event.get("choices") or [{}]  # a usage chunk has none
    if route == "chat":
        return text + ((choices[0].get("delta") or {}).get("content") or "")
    return text + (choices[0].get("text") or "")


@dataclass
class Outcome:
    """One request of the soak. ``category``: good, disconnect or bad."""

    category: str
    kind: str  # KINDS for good requests and disconnects, the BadRequest name for bad ones
    start: float  # seconds since the soak started
    latency: float = 0.0
    status: int = 0
    ok: bool = False  # good: 2xx, complete, no error; bad: answered 4xx
    mismatch: bool = False  # good: complete but not equal to the reference
    disconnected: bool = False  # disconnect: closed before the stream ended
    error: str = ""
    text: str = ""


async def _good(port: int, req: Good, out: Outcome, disconnect_after: int | None) -> None:
    response = await send(port, "POST", ROUTES[req.route], req.body())
    try:
        out.status = response.status
        if response.status != 200:
            out.error = f"HTTP {response.status}: {error_message(await response.read())}"
            return
        if not req.stream:
            out.text = final_text(req.route, json.loads(await response.read()))
            out.ok = True
            return
        events, done = 0, False
        async for data in iter_sse_data(response.iter_body()):
            if data.strip() == "[DONE]":
                done = True
                break
            out.text = streamed_text(req.route, json.loads(data), out.text)
            events += 1
            if events == disconnect_after:
                out.disconnected = out.ok = True
                return  # the connection is closed below, mid-stream
        if not done:
            out.error = "the stream ended without [DONE]"
        out.ok = done
    finally:
        response.close()


async def run_good(
    port: int, req: Good, t0: float, timeout: float, disconnect_after: int | None = None
) -> Outcome:
    """One good request; every failure is recorded in the outcome, never raised."""
    category = "good" if disconnect_after is None else "disconnect"
    out = Outcome(category, req.kind, time.monotonic() - t0)
    try:
        await asyncio.wait_for(_good(port, req, out, disconnect_after), timeout)
    except asyncio.TimeoutError:
        out.ok, out.error = False, f"no answer in {timeout:g} s (hang)"
    except Exception as e:
        out.ok, out.error = False, f"{type(e).__name__}: {e}"
    out.latency = time.monotonic() - t0 - out.start
    return out


async def run_bad(port: int, bad: BadRequest, t0: float, timeout: float) -> Outcome:
    out = Outcome("bad", f"{bad.path} {bad.name}", time.monotonic() - t0)
    try:
        response = await asyncio.wait_for(send(port, "POST", bad.path, bad.body), timeout)
        try:
            out.status = response.status
            body = await asyncio.wait_for(response.read(), timeout)
        finally:
            response.close()
        out.ok = 400 <= out.status < 500
        if not out.ok:
            out.error = f"HTTP {out.status}: {error_message(body)[:200]}"
    except asyncio.TimeoutError:
        out.error = f"no answer in {timeout:g} s (hang)"
    except Exception as e:
        out.error = f"{type(e).__name__}: {e}"
    out.latency = time.monotonic() - t0 - out.start
    return out


async def references(port: int) -> dict[tuple[str, str, int], str]:
    """The non-streamed output of every (route, prompt, max tokens), one request at a time."""
    refs = {}
    for route in ROUTES:
        for prompt in PROMPTS:
            for n in MAX_TOKENS:
                out = await run_good(port, Good(route, prompt, n, False), time.monotonic(), 60)
                if not out.ok:
                    sys.exit(
                        f"error: the reference request {route} {prompt!r} {n} failed: {out.error}"
                    )
                refs[route, prompt, n] = out.text
    return refs


# ---- the soak -------------------------------------------------------------------------------
async def client(
    port: int,
    index: int,
    args: argparse.Namespace,
    refs: dict[tuple[str, str, int], str],
    t0: float,
    outcomes: list[Outcome],
) -> None:
    """Send requests one after another until the soak's end; a mismatch is flagged here."""
    rng = random.Random(args.seed * 100_003 + index)
    end = t0 + args.duration
    while time.monotonic() < end:
        draw = rng.random()
        if draw < args.bad_share:
            outcomes.append(await run_bad(port, rng.choice(BAD_REQUESTS), t0, args.request_timeout))
            continue
        disconnect = draw < args.bad_share + args.disconnect_share
        req = Good(
            rng.choice(list(ROUTES)),
            rng.choice(PROMPTS),
            rng.choice(MAX_TOKENS),
            disconnect or rng.random() < 0.5,
        )
        after = rng.randint(1, 3) if disconnect else None
        out = await run_good(port, req, t0, args.request_timeout, after)
        out.mismatch = out.ok and not out.disconnected and out.text != refs[req.key]
        if out.mismatch:
            out.error = f"expected {refs[req.key]!r}, got {out.text!r} ({req})"
        outcomes.append(out)


async def wait_idle(port: int, baseline: int | None, timeout: float) -> tuple[dict, float]:
    """Poll the scheduler until nothing runs or waits and (with ``baseline``) the KV slots in
    use are back to it; returns its last stats and the seconds waited (``timeout`` at most)."""
    start = time.monotonic()
    while True:
        stats = (await get_json(port, "/get_server_info"))["scheduler"]
        idle = stats["num_running_reqs"] == 0 and stats["num_waiting_reqs"] == 0
        settled = baseline is None or stats["num_used_tokens"] == baseline
        waited = time.monotonic() - start
        if (idle and settled) or waited > timeout:
            return stats, waited
        await asyncio.sleep(0.2)


# ---- /health prober (its own process) -------------------------------------------------------
def probe_health(port: int, interval: float, timeout: float, stop: Any, conn: Any) -> None:
    """GET /health every ``interval`` s until ``stop`` is set; sends back a list of
    (monotonic start, seconds, status) with status 0 for a transport error or timeout."""
    samples = []
    due = time.monotonic()
    while not stop.is_set():
        start = time.monotonic()
        status = 0
        c = http.client.HTTPConnection(HOST, port, timeout=timeout)
        try:
            c.request("GET", "/health")
            response = c.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            pass
        finally:
            c.close()
        samples.append((start, time.monotonic() - start, status))
        due = max(due + interval, time.monotonic())
        stop.wait(due - time.monotonic())
    conn.send(samples)
    conn.close()


@contextlib.contextmanager
def health_prober(port: int, interval: float, timeout: float) -> Iterator[list]:
    """Probe /health from a spawned process while the block runs; the yielded list is filled
    with its samples when the block ends."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    receive, send_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=probe_health, args=(port, interval, timeout, stop, send_end))
    proc.start()
    samples: list = []
    try:
        yield samples
    finally:
        stop.set()
        samples.extend(receive.recv() if receive.poll(timeout + 30) else [])
        proc.join(10)


# ---- the server and its processes -----------------------------------------------------------
def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def server_memory(pid: int, log: Path) -> dict[str, Any]:
    """RSS (MB) and CPU seconds of the server and each of its processes, named from the log's
    start-up line ("spawned scheduler (pid N) and detokenizer (pid M)") or their command."""
    names = {
        int(p): n for n, p in re.findall(r"(\w+) \(pid (\d+)\)", log.read_text(errors="replace"))
    }
    names[pid] = "main"
    procs = {}
    tick = os.sysconf("SC_CLK_TCK")
    for p in process_tree(pid):
        with contextlib.suppress(OSError, StopIteration):
            status = Path(f"/proc/{p}/status").read_text()
            rss_kb = int(
                next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS:"))
            )
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
            name = names.get(p) or Path(f"/proc/{p}/comm").read_text().strip()
            if b"resource_tracker" in Path(f"/proc/{p}/cmdline").read_bytes():
                name = "resource_tracker"  # multiprocessing's helper
            procs[f"{name} {p}"] = {"rss_mb": rss_kb * 1024 / MB, "cpu_s": cpu}
    return {"total_rss_mb": sum(v["rss_mb"] for v in procs.values()), "processes": procs}


def server_command(args: argparse.Namespace, port: int) -> list[str]:
    cmd = [sys.executable, "-m", "radixlm.launch_server", "--host", HOST, "--port", str(port)]
    cmd += ["--num-threads", str(args.num_threads)]
    if args.model_path:
        cmd += ["--model-path", args.model_path]
    return cmd + shlex.split(args.server_args)


@contextlib.contextmanager
def launched(cmd: list[str], port: int, timeout: float, log: Path) -> Iterator[subprocess.Popen]:
    """The server as a subprocess of this checkout (its own session, so it can be stopped with
    every child), once /health answers."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env=env,
            start_new_session=True,
        )
    try:
        wait_until_ready(proc, f"http://{HOST}:{port}", timeout, log)
        yield proc
    finally:
        stop_server(proc)


# ---- report ---------------------------------------------------------------------------------


def _ms(values: list[float], q: float) -> float | None:
    p = percentile(values, q)
    return None if p is None else 1000 * p


def summarize(outcomes: list[Outcome], health: list[tuple], args: argparse.Namespace) -> dict:
    good = [o for o in outcomes if o.category == "good"]
    disc = [o for o in outcomes if o.category == "disconnect"]
    bad = [o for o in outcomes if o.category == "bad"]
    complete = [o for o in good + disc if o.ok and not o.disconnected]
    per_kind = {}
    for kind in KINDS:
        lat = [o.latency for o in good if o.kind == kind and o.ok]
        per_kind[kind] = {
            "ok": len(lat),
            "errored": sum(1 for o in good if o.kind == kind and not o.ok),
            "mismatched": sum(1 for o in good if o.kind == kind and o.mismatch),
            "p50_ms": _ms(lat, 50),
            "p99_ms": _ms(lat, 99),
            "max_ms": 1000 * max(lat) if lat else None,
        }
    h_lat = [s[1] for s in health]
    return {
        "requests": len(outcomes),
        "good_ok": sum(o.ok for o in good),
        "good_errored": sum(not o.ok for o in good),
        "good_per_s": sum(o.ok for o in good) / args.duration,
        "per_kind": per_kind,
        "checked_outputs": len(complete),
        "mismatches": sum(o.mismatch for o in outcomes),
        "bad_4xx": sum(o.ok for o in bad),
        "bad_other": sum(not o.ok for o in bad),
        "bad_status": dict(Counter(str(o.status) for o in bad)),
        "disconnect_attempts": len(disc),
        "disconnects_done": sum(o.disconnected for o in disc),
        "disconnect_streams_ended_first": sum(o.ok and not o.disconnected for o in disc),
        "disconnect_errored": sum(not o.ok for o in disc),
        "health_probes": len(health),
        "health_not_200": sum(s[2] != 200 for s in health),
        "health_p50_ms": _ms(h_lat, 50),
        "health_p99_ms": _ms(h_lat, 99),
        "health_max_ms": 1000 * max(h_lat) if h_lat else None,
        "errors": dict(Counter(o.error for o in outcomes if o.error).most_common(10)),
    }


def timeline(outcomes: list[Outcome], health: list[tuple], seconds: int) -> list[dict]:
    """Per second of the soak (by start time): good requests started, their p50 / p99 / max
    latency, and the /health max latency."""
    rows = []
    for s in range(seconds):
        lat = [
            o.latency for o in outcomes if o.category == "good" and o.ok and s <= o.start < s + 1
        ]
        h = [x[1] for x in health if s <= x[0] < s + 1]
        rows.append(
            {
                "second": s,
                "good_started": len(lat),
                "p50_ms": _ms(lat, 50),
                "p99_ms": _ms(lat, 99),
                "max_ms": 1000 * max(lat) if lat else None,
                "health_max_ms": 1000 * max(h) if h else None,
            }
        )
    return rows


def _f(value: float | None, spec: str = ".0f") -> str:
    return "n/a" if value is None else format(value, spec)


def log_incidents(log_text: str) -> dict[str, int]:
    """Each traceback in the server log as "<the message logged with it> -> <the exception>",
    counted."""
    lines = log_text.splitlines()
    found: Counter[str] = Counter()
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            message = re.sub(r"^[\d-]+ [\d:,]+ ", "", lines[i - 1]) if i else ""
            exc = next((ln for ln in lines[i + 1 :] if ln and not ln[0].isspace()), "")
            found[f"{message} -> {exc}"] += 1
    return dict(found.most_common())


def evaluate(s: dict, kv: dict, alive: bool, args: argparse.Namespace) -> dict:
    """The must-hold checks: name -> (passed, detail)."""
    health_ms = s["health_max_ms"] or 0.0
    return {
        "good requests all 2xx": (
            s["good_errored"] + s["disconnect_errored"] == 0,
            f"{s['good_errored']} good and {s['disconnect_errored']} disconnect requests errored",
        ),
        "outputs equal the reference": (
            s["mismatches"] == 0,
            f"{s['mismatches']} mismatches of {s['checked_outputs']}",
        ),
        "bad requests all 4xx": (
            s["bad_other"] == 0,
            f"{s['bad_other']} of {s['bad_4xx'] + s['bad_other']} answered otherwise",
        ),
        "KV back to baseline": (
            kv["idle_after"] and kv["after"] == kv["before"],
            f"{kv['before']} -> {kv['after']} tokens in use, idle: {kv['idle_after']}",
        ),
        "/health always fast": (
            s["health_not_200"] == 0 and health_ms <= 1000 * args.health_stall,
            f"max {health_ms:.1f} ms (limit {1000 * args.health_stall:.0f}), "
            f"{s['health_not_200']} not 200",
        ),
        "server alive at the end": (alive, "running" if alive else "exited"),
    }


def print_report(
    s: dict, kv: dict, mem: dict, incidents: dict[str, int], checks: dict[str, tuple[bool, str]]
) -> None:
    print(
        f"good requests: {s['good_ok']} ok (2xx, complete), {s['good_errored']} errored "
        f"({s['good_per_s']:.1f} ok/s); {s['requests']} requests in all"
    )
    print(
        f"  {'route kind':<18} {'ok':>6} {'errored':>7} {'mismatched':>10} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'max ms':>8}   (latency of the ok ones)"
    )
    for kind, k in s["per_kind"].items():
        print(
            f"  {kind:<18} {k['ok']:>6} {k['errored']:>7} {k['mismatched']:>10} "
            f"{_f(k['p50_ms']):>8} {_f(k['p99_ms']):>8} {_f(k['max_ms']):>8}"
        )
    print(
        f"outputs checked against the reference: {s['checked_outputs']} (good and disconnect ",
        end="",
    )
    print(f"streams that ended first), mismatches: {s['mismatches']}")
    print(f"bad requests: {s['bad_4xx']} answered 4xx, {s['bad_other']} otherwise ", end="")
    print(f"(status: count {s['bad_status']})")
    print(
        f"disconnects: {s['disconnects_done']} done mid-stream of {s['disconnect_attempts']} "
        f"attempts ({s['disconnect_streams_ended_first']} streams ended first, "
        f"{s['disconnect_errored']} errored)"
    )
    print(
        f"/health: {s['health_probes']} probes (one at a time), p50 {_f(s['health_p50_ms'], '.1f')} ms, p99 "
        f"{_f(s['health_p99_ms'], '.1f')} ms, max {_f(s['health_max_ms'], '.1f')} ms, "
        f"{s['health_not_200']} not 200"
    )
    print(
        f"KV slots in use on the idle server: before {kv['before']}, after {kv['after']} "
        f"(idle {kv['idle_wait_s']:.1f} s after the last request; pool {kv['pool']})"
    )
    b, a = mem["before"], mem["after"]
    print(
        f"server RSS: before {b['total_rss_mb']:.0f} MB, after {a['total_rss_mb']:.0f} MB "
        f"({a['total_rss_mb'] - b['total_rss_mb']:+.0f} MB)"
    )
    for name, p in a["processes"].items():
        before = b["processes"].get(name, {}).get("rss_mb")
        print(f"  {name:<20} {_f(before)} -> {p['rss_mb']:.0f} MB, CPU {p['cpu_s']:.0f} s in all")
    for error, count in s["errors"].items():
        print(f"error x{count}: {error}")
    print(f"server log: {sum(incidents.values())} tracebacks")
    for incident, count in incidents.items():
        print(f"  x{count}: {incident}")
    for name, (passed, detail) in checks.items():
        print(f"[{'PASS' if passed else 'FAIL'}] {name}: {detail}")


def plot(
    path: Path, outcomes: list[Outcome], health: list[tuple], stall: float, title: str
) -> None:
    """Latency of every good request by start time and route kind (errored good requests and
    disconnects, and mismatches, marked); /health latency below."""
    try:
        import matplotlib
    except ImportError:
        print(f"no plot: matplotlib is not installed (pip install -e .[bench]); not writing {path}")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, height_ratios=(3, 2))
    for kind in KINDS:
        pts = [
            (o.start, 1000 * o.latency)
            for o in outcomes
            if o.category == "good" and o.ok and o.kind == kind
        ]
        if pts:
            top.scatter(*zip(*pts), s=2, alpha=0.4, label=kind, rasterized=True)
    for label, color, wrong in (
        ("errored", "red", [o for o in outcomes if o.category != "bad" and not o.ok]),
        ("mismatch", "black", [o for o in outcomes if o.mismatch]),
    ):
        if wrong:
            pts = [(o.start, 1000 * o.latency) for o in wrong]
            top.scatter(*zip(*pts), s=14, c=color, marker="x", lw=0.8, label=label)
    top.set_yscale("log")
    top.set_ylabel("good request latency (ms)")
    top.legend(loc="upper right", fontsize=7, markerscale=4, ncol=2)
    top.set_title(title, fontsize=9)
    if health:
        bottom.plot([h[0] for h in health], [1000 * h[1] for h in health], ".-", ms=2, lw=0.5)
    bottom.axhline(1000 * stall, color="red", ls="--", lw=0.8, label="stall limit")
    bottom.legend(loc="upper right", fontsize=7)
    bottom.set_yscale("log")
    bottom.set_ylabel("/health latency (ms)")
    bottom.set_xlabel("seconds since the soak started (by request start)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


# ---- main -----------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    a = p.add_argument
    a("--model-path", default=None, help="model directory (default: the bundled stories260K)")
    a("--num-threads", type=int, default=2, help="server torch threads")
    a("--server-args", default="", help="extra server flags, e.g. --server-args='--max-n 8'")
    a("--duration", type=float, default=60.0, help="seconds during which requests are started")
    a("--concurrency", type=int, default=500, help="client tasks, each one request at a time")
    a("--bad-share", type=float, default=0.1, help="share of requests that are bad")
    a("--disconnect-share", type=float, default=0.1, help="share that disconnect mid-stream")
    a("--request-timeout", type=float, default=120.0, help="seconds; a request past it is a hang")
    a("--health-interval", type=float, default=0.1, help="seconds between /health probes")
    a("--health-stall", type=float, default=1.0, help="seconds; a slower /health probe fails")
    a("--idle-timeout", type=float, default=60.0, help="seconds to wait for the idle server")
    a("--server-timeout", type=float, default=600.0, help="seconds to wait for /health at start")
    a("--seed", type=int, default=0)
    a("--output-file", default=None, help="JSON; default bench/results/soak_<UTC date>.json")
    args = p.parse_args()
    if args.duration <= 0 or args.concurrency < 1 or args.num_threads < 1:
        p.error("--duration must be > 0, --concurrency and --num-threads >= 1")
    if not (
        0 <= args.bad_share
        and 0 <= args.disconnect_share
        and args.bad_share + args.disconnect_share <= 1
    ):
        p.error("--bad-share and --disconnect-share must be >= 0 and sum to at most 1")
    if args.output_file is None:
        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        args.output_file = str(REPO_ROOT / "bench" / "results" / f"soak_{day}.json")
    return args


async def run(args: argparse.Namespace, port: int, proc: subprocess.Popen, log: Path) -> dict:
    t = time.monotonic()
    refs = await references(port)
    info = await get_json(port, "/get_model_info")
    server_info = await get_json(port, "/get_server_info")
    print(
        f"model {info.get('served_model_name')} ({info.get('model_path')}), context "
        f"{info.get('context_length')}, KV pool {server_info.get('max_total_num_tokens')} tokens, "
        f"max running requests {server_info.get('max_running_requests')}"
    )
    print(
        f"references: {len(refs)} ({len(ROUTES)} routes x {len(PROMPTS)} prompts x max tokens "
        f"{', '.join(map(str, MAX_TOKENS))}), one at a time, in {time.monotonic() - t:.1f} s"
    )
    before, _ = await wait_idle(port, None, args.idle_timeout)
    mem_before = server_memory(proc.pid, log)
    print(
        f"soak: {args.duration:g} s, {args.concurrency} clients, bad {args.bad_share:.0%}, "
        f"disconnect {args.disconnect_share:.0%}, the rest good (half streamed); /health every "
        f"{1000 * args.health_interval:.0f} ms ...",
        flush=True,
    )
    outcomes: list[Outcome] = []
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    with health_prober(port, args.health_interval, max(args.health_stall, 10.0)) as health:
        t0 = time.monotonic()
        tasks = [client(port, i, args, refs, t0, outcomes) for i in range(args.concurrency)]
        await asyncio.gather(*tasks)
        drained = time.monotonic() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    health = [(start - t0, seconds, status) for start, seconds, status in health]
    after, waited = await wait_idle(port, before["num_used_tokens"], args.idle_timeout)
    mem_after = server_memory(proc.pid, log)
    client_cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    print(f"all clients done {drained:.1f} s after the start; client CPU {client_cpu:.0f} s")
    return {
        "refs": refs,
        "outcomes": outcomes,
        "health": health,
        "drained_s": drained,
        "client_cpu_s": client_cpu,
        "server_info": server_info,
        "kv": {
            "before": before["num_used_tokens"],
            "after": after["num_used_tokens"],
            "idle_after": after["num_running_reqs"] == 0 and after["num_waiting_reqs"] == 0,
            "idle_wait_s": waited,
            "pool": server_info.get("max_total_num_tokens"),
            "stats_before": before,
            "stats_after": after,
        },
        "memory": {"before": mem_before, "after": mem_after},
    }


def main() -> int:
    args = parse_args()
    tee = Tee(sys.stdout)
    sys.stdout = tee  # type: ignore[assignment]
    env = environment(args.num_threads)
    print_header(env, args.num_threads)
    port = free_port()
    cmd = server_command(args, port)
    log = Path(tempfile.mkdtemp(prefix="radixlm_soak_")) / "server.log"
    print(f"server: {shlex.join(cmd)} (log {log})", flush=True)
    with launched(cmd, port, args.server_timeout, log) as proc:
        r = asyncio.run(run(args, port, proc, log))
        alive = proc.poll() is None
    s = summarize(r["outcomes"], r["health"], args)
    kv = r["kv"]
    incidents = log_incidents(log.read_text(errors="replace"))
    checks = evaluate(s, kv, alive, args)
    print_report(s, kv, r["memory"], incidents, checks)
    passed = all(ok for ok, _ in checks.values())
    print(f"soak {'PASSED' if passed else 'FAILED'}")

    out = Path(args.output_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    failures = [o.__dict__ for o in r["outcomes"] if not o.ok or o.mismatch][:50]
    record = {
        "env": env,
        "args": vars(args),
        "server_command": shlex.join(cmd),
        "server_log": str(log),
        "passed": passed,
        "checks": {k: {"passed": ok, "detail": d} for k, (ok, d) in checks.items()},
        "summary": s,
        "kv": kv,
        "memory": r["memory"],
        "client_cpu_s": r["client_cpu_s"],
        "drained_s": r["drained_s"],
        "server_log_tracebacks": incidents,
        "failures": failures,
        "references": [
            {"route": k[0], "prompt": k[1], "max_tokens": k[2], "text": v}
            for k, v in r["refs"].items()
        ],
        "timeline": timeline(r["outcomes"], r["health"], int(args.duration) + 1),
        "health_samples": [[round(t, 3), round(1000 * x, 2), st] for t, x, st in r["health"]],
    }
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    title = (
        f"soak {args.duration:g} s, {args.concurrency} clients, {env['git_commit'][:7]}: "
        f"{s['good_ok']} good ok / {s['good_errored']} errored, {s['mismatches']} mismatches, "
        f"bad 4xx {s['bad_4xx']} / other {s['bad_other']}, {s['disconnects_done']} disconnects"
    )
    plot(out.with_suffix(".png"), r["outcomes"], r["health"], args.health_stall, title)
    out.with_suffix(".txt").write_text("".join(tee.parts))
    sys.stdout = tee.stream
    print(f"wrote {out.with_suffix('.txt')}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
