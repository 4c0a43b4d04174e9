"""Online serving benchmark: stream requests to a running server and report throughput/latency.

A client in the style of vLLM's ``benchmark_serving.py`` with its own stdlib HTTP/1.1 client
(asyncio streams; ``Content-Length`` and ``Transfer-Encoding: chunked`` bodies; server-sent
events), so what it measures is the server, not a client library. Per request: success or the
error text, prompt tokens (``--tokenizer`` count), output tokens (as the server reports them,
else the tokenizer count of the text), TTFT (first chunk with text), ITL (gaps between chunks
with text) and end-to-end latency. Aggregates: throughput, and mean / median / p99 of TTFT,
TPOT ((e2e - TTFT) / (output tokens - 1)), ITL and E2E; also the server's own counters
(``/get_server_info`` ``internal_states``: CPU seconds outside the forward pass per request,
forward seconds), when it reports them.

Backends: ``radixlm`` (alias ``sglang``) = native ``POST /generate`` (cumulative ``text``,
``meta_info.completion_tokens``); ``openai`` = ``POST /v1/completions``; ``openai-chat`` =
``POST /v1/chat/completions``. Every request is greedy with EOS ignored, so each one generates
exactly its output length. Datasets: ``sharegpt`` (first human turn; output length from the first
reply or ``--sharegpt-output-len``), ``random`` (decoded random token ids) and
``generated-shared-prefix`` (groups of prompts sharing one random system prompt). Load: all at
once (``--request-rate inf``) or Poisson arrivals, optionally capped by ``--max-concurrency``.

``--launch`` compares overlap scheduling on and off: it starts ``radixlm.launch_server`` twice on
the 120M random-weight Llama of ``bench/common.py`` (with ``--enable-overlap-schedule``, then
with ``--disable-overlap-schedule``; overlap is off by default on CPU), runs the same workload against each and prints both plus the
ratio overlap / no-overlap. Example (from the repo root; a few minutes on 2 cores):

    python bench/serving.py --launch --dataset-name sharegpt --sharegpt-output-len 64 \\
        --num-prompts 64 --num-threads 2 --output-file /tmp/serving_overlap.json

``--max-concurrency 1,4,16,64`` (a comma-separated list) runs the workload once per level on
each server: throughput against concurrency. Each run's JSON record holds its level
(``max_concurrency``, null = unlimited) and the 0th..100th percentiles of TTFT, TPOT, ITL and E2E
(``quantiles_ms``), from which ``--plot-file`` (default: ``--output-file`` with ``.png``; see
``bench/plots.py``) draws output tok/s against concurrency and the TTFT and ITL CDFs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from common import (
    DEFAULT_SHAREGPT,
    DEFAULT_TOKENIZER,
    REPO_ROOT,
    ModelShape,
    ensure_model,
    environment,
    progress,
    repo_path,
)
from plots import PLOT_HELP, plot_path, write_plot

from radixlm_lang.backend.runtime_endpoint import free_port

DEFAULT_BASE_URL = "http://127.0.0.1:30000"
WARMUP_MAX_TOKENS = 16  # warm-up requests are capped to this many new tokens
STATE_KEYS = ("cpu_seconds_outside_forward", "forward_seconds", "num_finished_requests")


# ---- HTTP/1.1 client (one connection per request) -------------------------------------------
class HttpResponse:
    """Status and headers of a response whose body is read lazily from its own connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self.status = 0
        self.headers: dict[str, str] = {}  # lower-case names

    async def read_head(self) -> None:
        line = await self._reader.readline()
        if not line:
            raise ConnectionError("the server closed the connection without a response")
        parts = line.decode("latin-1").split(None, 2)  # "HTTP/1.1 200 OK"
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ConnectionError(f"bad status line {line!r}")
        self.status = int(parts[1])
        while (line := await self._reader.readline()).strip():
            name, _, value = line.decode("latin-1").partition(":")
            key = name.strip().lower()
            value = value.strip()
            self.headers[key] = f"{self.headers[key]}, {value}" if key in self.headers else value

    async def iter_body(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive: de-chunked, or ``Content-Length`` bytes, or until EOF."""
        reader = self._reader
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            while True:
                size_line = await reader.readline()
                if not size_line.endswith(b"\n"):
                    raise ConnectionError("connection closed inside a chunked body")
                size = int(size_line.split(b";", 1)[0].strip(), 16)  # drop chunk extensions
                if size == 0:
                    while (await reader.readline()).strip():  # trailer fields
                        pass
                    return
                chunk = await reader.readexactly(size)
                await reader.readexactly(2)  # CRLF after the chunk data
                yield chunk
        elif "content-length" in self.headers:
            remaining = int(self.headers["content-length"])
            while remaining > 0:
                chunk = await reader.read(min(remaining, 1 << 16))
                if not chunk:
                    raise ConnectionError(f"connection closed with {remaining} body bytes unread")
                remaining -= len(chunk)
                yield chunk
        else:
            while chunk := await reader.read(1 << 16):
                yield chunk

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_body()])

    def close(self) -> None:
        self._writer.close()


async def http_request(
    url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None
) -> HttpResponse:
    """Send one request (``body`` as JSON) on a new connection; return once headers are read."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if https else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    reader, writer = await asyncio.open_connection(host, port, ssl=True if https else None)
    response = HttpResponse(reader, writer)
    try:
        data = b"" if body is None else json.dumps(body).encode()
        lines = [
            f"{method} {target} HTTP/1.1",
            f"Host: {parts.netloc.rpartition('@')[2]}",
            "User-Agent: radixlm-bench-serving",
            "Accept: */*",
            "Connection: close",
        ]
        if body is not None or method in ("POST", "PUT"):
            lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)
        await writer.drain()
        await response.read_head()
    except BaseException:
        response.close()
        raise
    return response


async def iter_sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event (several ``data:`` lines are joined by newlines);
    comments and other fields are skipped. Lines are split before decoding, so a chunk boundary
    inside a multi-byte character is harmless."""
    buf, data = b"", []
    async for chunk in chunks:
        *lines, buf = (buf + chunk).split(b"\n")
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8")
            if not line and data:  # a blank line ends the event
                yield "\n".join(data)
                data = []
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
    if buf.startswith(b"data:"):
        data.append(buf[5:].rstrip(b"\r").decode("utf-8").removeprefix(" "))
    if data:
        yield "\n".join(data)


def error_message(payload: Any) -> str:
    """The human-readable message of an error body: OpenAI/SGLang ``{"error": {"message"}}``,
    FastAPI ``{"detail"}``, ``{"message"}``, or the body itself."""
    if isinstance(payload, (bytes, bytearray)):
        text = payload.decode("utf-8", "replace")
        try:
            payload = json.loads(text)
        except ValueError:
            return text.strip()[:500]
    if isinstance(payload, dict):
        err = payload.get("error", payload.get("detail", payload.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            payload = err
    return payload if isinstance(payload, str) else json.dumps(payload)


# ---- workload -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleRequest:
    prompt: str
    prompt_len: int  # tokens, by the client's tokenizer
    output_len: int  # new tokens requested (EOS ignored, so also the expected count)


def _random_ids(rng: random.Random, tokenizer: Any, n: int) -> list[int]:
    special = set(getattr(tokenizer, "all_special_ids", None) or ())
    ids: list[int] = []
    while len(ids) < n:
        token = rng.randrange(tokenizer.vocab_size)
        if token not in special:
            ids.append(token)
    return ids


def _random_text(rng: random.Random, tokenizer: Any, n: int) -> str:
    """Text of about ``n`` tokens: random ids decoded, re-tokenized and cut back to ``n`` (decoded
    random ids can re-tokenize into more tokens than were drawn)."""
    text = tokenizer.decode(_random_ids(rng, tokenizer, n))
    ids = tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.decode(ids[:n]) if len(ids) > n else text


def _sample(tokenizer: Any, prompt: str, output_len: int) -> SampleRequest:
    return SampleRequest(prompt, len(tokenizer.encode(prompt)), output_len)


def sharegpt_requests(
    path: Path, tokenizer: Any, num_prompts: int, output_len: int | None, seed: int
) -> list[SampleRequest]:
    """First human turn of shuffled conversations; the output length is ``output_len`` or the
    token length of the first reply. Skipped like vLLM: prompt < 4 tokens, reply < 4 tokens
    (without ``output_len``), prompt > 1024, prompt + output > 2048."""
    with open(path) as f:
        conversations = json.load(f)
    pairs: list[tuple[str, str | None]] = []
    for conv in conversations:
        turns = conv.get("conversations") or []
        first = next((i for i, t in enumerate(turns) if t.get("from") in ("human", "user")), None)
        if first is not None:
            reply = next(
                (t["value"] for t in turns[first + 1 :] if t.get("from") in ("gpt", "assistant")),
                None,
            )
            pairs.append((turns[first]["value"], reply))
    random.Random(seed).shuffle(pairs)
    out, no_reply = [], 0
    for prompt, reply in pairs:
        if len(out) == num_prompts:
            break
        if output_len is None and reply is None:
            no_reply += 1
            continue
        p = len(tokenizer.encode(prompt))
        o = output_len if output_len is not None else len(tokenizer.encode(reply))
        if p < 4 or (output_len is None and o < 4) or p > 1024 or p + o > 2048:
            continue
        out.append(SampleRequest(prompt, p, o))
    if len(out) < num_prompts:
        hint = (
            f"; {no_reply} conversations have no reply to take an output length from: "
            "pass --sharegpt-output-len"
            if no_reply
            else ""
        )
        raise ValueError(
            f"{path} has only {len(out)} usable conversations, --num-prompts is {num_prompts}"
            + hint
        )
    return out


def random_requests(
    tokenizer: Any, num_prompts: int, input_len: int, output_len: int, range_ratio: float, seed: int
) -> list[SampleRequest]:
    """Prompts of random tokens; lengths uniform in [ratio * len, len]. The prompt length recorded
    is the client tokenizer's count of the text, which can differ a little from the drawn one."""
    rng = random.Random(seed)
    out = []
    for _ in range(num_prompts):
        n_in = rng.randint(max(1, int(input_len * range_ratio)), input_len)
        n_out = rng.randint(max(1, int(output_len * range_ratio)), output_len)
        out.append(_sample(tokenizer, _random_text(rng, tokenizer, n_in), n_out))
    return out


def shared_prefix_requests(
    tokenizer: Any,
    num_groups: int,
    prompts_per_group: int,
    system_len: int,
    question_len: int,
    output_len: int,
    seed: int,
) -> list[SampleRequest]:
    """``num_groups`` random system prompts of ``system_len`` tokens, each followed by
    ``prompts_per_group`` distinct random questions of ``question_len`` tokens; shuffled."""
    rng = random.Random(seed)
    out = []
    for _ in range(num_groups):
        system = _random_text(rng, tokenizer, system_len)
        for _ in range(prompts_per_group):
            question = _random_text(rng, tokenizer, question_len)
            out.append(_sample(tokenizer, system + question, output_len))
    rng.shuffle(out)
    return out


# ---- one request ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """Where and how to send requests."""

    base_url: str
    backend: str  # a key of BACKENDS
    model: str = "default"
    api_key: str | None = None
    timeout: float = 3600.0  # seconds per request

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass
class RequestResult:
    success: bool = False
    error: str = ""
    prompt_len: int = 0
    output_len: int = 0  # requested
    output_tokens: int | None = None  # generated: server-reported, else tokenizer count
    output_tokens_from_server: bool = False
    ttft: float = 0.0  # seconds
    itl: list[float] = field(default_factory=list)  # seconds between chunks with text
    latency: float = 0.0  # seconds, end to end
    generated_text: str = ""


@dataclass(frozen=True)
class Backend:
    """``build(sample, model) -> (path, payload)``; ``parse(event, text_so_far) -> (new text,
    completion tokens or None)`` for one streamed JSON event."""

    build: Callable[[SampleRequest, str], tuple[str, dict[str, Any]]]
    parse: Callable[[dict[str, Any], str], tuple[str, int | None]]


def _native_build(s: SampleRequest, model: str) -> tuple[str, dict[str, Any]]:
    params = {"max_new_tokens": s.output_len, "temperature": 0, "ignore_eos": True}
    return "/generate", {"text": s.prompt, "sampling_params": params, "stream": True}


def _native_parse(event: dict[str, Any], text: str) -> tuple[str, int | None]:
    # Native events carry the cumulative text: the new part is what extends the text so far.
    full = event.get("text") or ""
    return full[len(text) :], (event.get("meta_info") or {}).get("completion_tokens")


def _openai_common(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }


def _completions_build(s: SampleRequest, model: str) -> tuple[str, dict[str, Any]]:
    payload = {**_openai_common(model), "prompt": s.prompt, "max_tokens": s.output_len}
    return "/v1/completions", payload


def _chat_build(s: SampleRequest, model: str) -> tuple[str, dict[str, Any]]:
    messages = [{"role": "user", "content": s.prompt}]
    payload = {**_openai_common(model), "messages": messages}
    return "/v1/chat/completions", {**payload, "max_completion_tokens": s.output_len}


def _openai_parse(event: dict[str, Any], chat: bool) -> tuple[str, int | None]:
    choices = event.get("choices") or []
    first = choices[0] if choices else {}
    delta = (first.get("delta") or {}).get("content") if chat else first.get("text")
    return delta or "", (event.get("usage") or {}).get("completion_tokens")


_NATIVE = Backend(_native_build, _native_parse)
BACKENDS = {
    "radixlm": _NATIVE,
    "sglang": _NATIVE,
    "openai": Backend(_completions_build, lambda e, _: _openai_parse(e, chat=False)),
    "openai-chat": Backend(_chat_build, lambda e, _: _openai_parse(e, chat=True)),
}


async def _stream(target: Target, sample: SampleRequest, result: RequestResult) -> None:
    backend = BACKENDS[target.backend]
    path, payload = backend.build(sample, target.model)
    start = time.perf_counter()
    response = await http_request(target.base_url + path, "POST", payload, target.headers())
    try:
        if response.status != 200:
            result.error = f"HTTP {response.status}: {error_message(await response.read())}"
            return
        text, last = "", start
        async for data in iter_sse_data(response.iter_body()):
            if data.strip() == "[DONE]":
                break
            event = json.loads(data)
            finish = (event.get("meta_info") or {}).get("finish_reason")
            if "error" in event or (isinstance(finish, dict) and finish.get("type") == "abort"):
                result.error = f"error event: {error_message(event.get('error', finish))}"
                break
            delta, tokens = backend.parse(event, text)
            now = time.perf_counter()
            if tokens is not None:
                result.output_tokens, result.output_tokens_from_server = int(tokens), True
            if delta:
                if text:
                    result.itl.append(now - last)
                else:
                    result.ttft = now - start
                text, last = text + delta, now
        result.latency = time.perf_counter() - start
        result.generated_text = text
        if not result.error and not text:
            result.error = "the stream ended without any generated text"
        result.success = not result.error
    finally:
        response.close()


async def send_request(target: Target, sample: SampleRequest) -> RequestResult:
    """Stream one request; every failure (HTTP status, error event, timeout, connection) is
    recorded in the result, never raised."""
    result = RequestResult(prompt_len=sample.prompt_len, output_len=sample.output_len)
    try:
        await asyncio.wait_for(_stream(target, sample, result), target.timeout)
    except asyncio.TimeoutError:
        result.success, result.error = False, f"timed out after {target.timeout:g} s"
    except Exception as e:
        result.success, result.error = False, f"{type(e).__name__}: {e}"
    return result


async def get_json(target: Target, path: str) -> Any:
    """GET ``path`` as JSON; None on any failure (the endpoint is optional)."""
    try:
        response = await http_request(target.base_url + path, headers=target.headers())
        try:
            return json.loads(await response.read()) if response.status == 200 else None
        finally:
            response.close()
    except (OSError, ValueError, EOFError):
        return None


async def flush_cache(target: Target, tries: int = 50) -> bool:
    """``POST /flush_cache`` (retried while the server still finishes requests): so each level of
    a concurrency sweep starts from an empty prefix cache. False if the server never flushed."""
    for _ in range(tries):
        try:
            response = await http_request(
                target.base_url + "/flush_cache", "POST", None, target.headers()
            )
            response.close()
        except OSError:
            return False
        if response.status == 200:
            return True
        if response.status != 400:  # 400: requests still running; others: no such route
            return False
        await asyncio.sleep(0.1)
    return False


async def resolve_model(target: Target) -> str:
    """The first id of ``GET /v1/models``, else ``"default"``."""
    models = await get_json(target, "/v1/models")
    try:
        return str(models["data"][0]["id"])
    except (TypeError, KeyError, IndexError):
        return "default"


async def internal_states(target: Target) -> dict[str, float] | None:
    """The server's cumulative counters from ``/get_server_info`` (summed over ranks when it
    lists one dict per rank), or None if it does not report them."""
    info = await get_json(target, "/get_server_info")
    states = info.get("internal_states") if isinstance(info, dict) else None
    if isinstance(states, dict):
        states = [states]
    if not isinstance(states, list):
        return None
    totals: dict[str, float] = {}
    for key in STATE_KEYS:
        values = [
            s[key] for s in states if isinstance(s, dict) and isinstance(s.get(key), int | float)
        ]
        if values:
            totals[key] = sum(values)
    return totals or None


def states_delta(
    before: dict[str, float] | None, after: dict[str, float] | None, num_requests: int
) -> dict[str, float]:
    """Counter deltas over the measured run, and CPU ms outside the forward per request."""
    delta = {
        k: after[k] - before[k] for k in STATE_KEYS if k in (before or {}) and k in (after or {})
    }
    if "cpu_seconds_outside_forward" in delta and num_requests:
        cpu = delta["cpu_seconds_outside_forward"]
        delta["cpu_ms_outside_forward_per_request"] = 1000 * cpu / num_requests
    return delta


# ---- the benchmark --------------------------------------------------------------------------
@dataclass
class BenchmarkRun:
    results: list[RequestResult]
    duration: float  # seconds from the first measured request to the last completion
    server: dict[str, float]  # states_delta over the measured run; empty if not reported


def arrival_times(n: int, request_rate: float, rng: random.Random) -> list[float]:
    """Seconds after the start at which each request is sent: all at 0 for an infinite rate,
    else a Poisson process (exponential gaps of mean 1 / rate), the first at 0."""
    times, t = [], 0.0
    for _ in range(n):
        times.append(t)
        if math.isfinite(request_rate):
            t += rng.expovariate(request_rate)
    return times


async def run_benchmark(
    target: Target,
    requests: list[SampleRequest],
    *,
    request_rate: float = math.inf,
    max_concurrency: int | None = None,
    warmup_requests: int = 1,
    seed: int = 0,
    tokenizer: Any = None,
) -> BenchmarkRun:
    """Warm up (unmeasured, sequential, capped at ``WARMUP_MAX_TOKENS``; raises RuntimeError if
    one fails), then send every request on schedule and wait for all. With ``tokenizer``,
    results the server gave no token count for are counted by it."""
    for i in range(warmup_requests):
        sample = requests[i % len(requests)]
        capped = replace(sample, output_len=min(sample.output_len, WARMUP_MAX_TOKENS))
        warm = await send_request(target, capped)
        if not warm.success:
            raise RuntimeError(f"warm-up request failed: {warm.error}")
    before = await internal_states(target)
    semaphore = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    bar = progress(len(requests), f"{target.backend} requests")

    async def limited(sample: SampleRequest) -> RequestResult:
        try:
            if semaphore is None:
                return await send_request(target, sample)
            async with semaphore:
                return await send_request(target, sample)
        finally:
            bar.update(1)

    tasks = []
    start = time.perf_counter()
    for sample, at in zip(
        requests, arrival_times(len(requests), request_rate, random.Random(seed))
    ):
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(limited(sample)))
    results = list(await asyncio.gather(*tasks))
    duration = time.perf_counter() - start
    bar.close()
    after = await internal_states(target)
    if tokenizer is not None:
        for r in results:
            if r.success and r.output_tokens is None:
                r.output_tokens = len(tokenizer.encode(r.generated_text, add_special_tokens=False))
    return BenchmarkRun(results, duration, states_delta(before, after, len(results)))


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile with linear interpolation (numpy's default); None if empty."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def latency_samples(ok: list[RequestResult]) -> dict[str, list[float]]:
    """TTFT, TPOT, ITL and E2E samples (seconds) of successful results."""
    return {
        "ttft": [r.ttft for r in ok],
        "tpot": [
            (r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if (r.output_tokens or 0) > 1
        ],
        "itl": [x for r in ok for x in r.itl],
        "e2e": [r.latency for r in ok],
    }


def latency_quantiles(results: list[RequestResult]) -> dict[str, list[float] | None]:
    """The 0th, 1st, ..., 100th percentile of each latency in ms (None without samples): a
    compact form of its distribution, enough to redraw its CDF."""
    out: dict[str, list[float] | None] = {}
    for name, seconds in latency_samples([r for r in results if r.success]).items():
        ms = [1000 * s for s in seconds]
        out[name] = [round(percentile(ms, q), 3) for q in range(101)] if ms else None
    return out


def summarize(results: list[RequestResult], duration: float) -> dict[str, Any]:
    """Aggregates over successful requests; latencies in ms (None when there is no sample)."""
    ok = [r for r in results if r.success]
    input_tokens = sum(r.prompt_len for r in ok)
    output_tokens = sum(r.output_tokens or 0 for r in ok)

    def per_s(x: float) -> float:
        return x / duration if duration > 0 else 0.0

    summary: dict[str, Any] = {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "duration_s": duration,
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "output_len_mismatches": sum(r.output_tokens != r.output_len for r in ok),
        "request_throughput": per_s(len(ok)),
        "input_throughput": per_s(input_tokens),
        "output_throughput": per_s(output_tokens),
        "total_token_throughput": per_s(input_tokens + output_tokens),
    }
    for name, seconds in latency_samples(ok).items():
        ms = [1000 * s for s in seconds]
        summary[f"mean_{name}_ms"] = statistics.fmean(ms) if ms else None
        summary[f"median_{name}_ms"] = percentile(ms, 50)
        summary[f"p99_{name}_ms"] = percentile(ms, 99)
    summary["errors"] = dict(Counter(r.error for r in results if not r.success).most_common(5))
    return summary


# ---- reporting ------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def print_summary(summary: dict[str, Any], title: str, server: dict[str, float]) -> None:
    """A vLLM-style table of one run; ``server`` is ``BenchmarkRun.server``."""
    width = 56

    def row(label: str, value: float | None, spec: str) -> None:
        print(f"{label + ':':<44}{_fmt(value, spec):>12}")

    print(f" {title} ".center(width, "="))
    row("Successful requests", summary["completed"], "d")
    row("Failed requests", summary["failed"], "d")
    row("Benchmark duration (s)", summary["duration_s"], ".2f")
    row("Total input tokens", summary["total_input_tokens"], "d")
    row("Total generated tokens", summary["total_output_tokens"], "d")
    row("Requests with output tokens != requested", summary["output_len_mismatches"], "d")
    row("Request throughput (req/s)", summary["request_throughput"], ".3f")
    row("Input token throughput (tok/s)", summary["input_throughput"], ".2f")
    row("Output token throughput (tok/s)", summary["output_throughput"], ".2f")
    row("Total token throughput (tok/s)", summary["total_token_throughput"], ".2f")
    metrics = {"ttft": "TTFT", "tpot": "TPOT (excl. 1st token)", "itl": "ITL", "e2e": "E2E latency"}
    for name, label in metrics.items():
        print(f" {label} ".center(width, "-"))
        for stat in ("mean", "median", "p99"):
            row(f"{stat.capitalize()} {label} (ms)", summary[f"{stat}_{name}_ms"], ".2f")
    print(" Server counters over the measured run ".center(width, "-"))
    row(
        "CPU outside forward per request (ms)",
        server.get("cpu_ms_outside_forward_per_request"),
        ".3f",
    )
    row("Forward time (s)", server.get("forward_seconds"), ".2f")
    row("Finished requests (server count)", server.get("num_finished_requests"), ".0f")
    for error, count in summary["errors"].items():
        print(f"error x{count}: {error}")
    print("=" * width, flush=True)


def print_comparison(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run and, per concurrency level, the ratios overlap / no-overlap (returned)."""
    several = len({r.get("max_concurrency") for r in runs}) > 1
    head = (
        f"{'run':<15} {'req/s':>7} {'out tok/s':>9} {'TTFT ms':>8} {'TPOT ms':>8} {'ITL ms':>7} "
        f"{'p99 ITL':>8} {'E2E ms':>8} {'CPU-out-fwd ms/req':>18} {'fwd s':>7} {'failed':>6}"
    )
    print("\nOverlap scheduling on vs off (same workload; latencies are means)")
    print(head)
    print("-" * len(head))
    for run in runs:
        s, srv = run["summary"], run["server"]
        name = run["label"] + (f" c{run.get('max_concurrency') or 'all'}" if several else "")
        print(
            f"{name:<15} {s['request_throughput']:>7.3f} {s['output_throughput']:>9.2f} "
            f"{_fmt(s['mean_ttft_ms'], '.1f'):>8} {_fmt(s['mean_tpot_ms'], '.1f'):>8} "
            f"{_fmt(s['mean_itl_ms'], '.1f'):>7} {_fmt(s['p99_itl_ms'], '.1f'):>8} "
            f"{_fmt(s['mean_e2e_ms'], '.0f'):>8} "
            f"{_fmt(srv.get('cpu_ms_outside_forward_per_request'), '.3f'):>18} "
            f"{_fmt(srv.get('forward_seconds'), '.2f'):>7} {s['failed']:>6}"
        )
    out = []
    for level in dict.fromkeys(r.get("max_concurrency") for r in runs):
        on, off = (
            next(
                r["summary"]
                for r in runs
                if r["label"] == label and r.get("max_concurrency") == level
            )
            for label in ("overlap", "no-overlap")
        )
        ratios = {
            k: on[k] / off[k] if off[k] else None
            for k in ("output_throughput", "request_throughput")
        }
        at = f" at max concurrency {level or 'unlimited'}" if several else ""
        print(
            f"ratio overlap / no-overlap{at}: output tok/s "
            f"{_fmt(ratios['output_throughput'], '.3f')}x, request throughput "
            f"{_fmt(ratios['request_throughput'], '.3f')}x",
            flush=True,
        )
        out.append({"max_concurrency": level, **ratios})
    return out


# ---- launching servers (--launch) -----------------------------------------------------------
def wait_until_ready(proc: subprocess.Popen, base_url: str, timeout: float, log: Path) -> None:
    """Poll ``GET /health`` until 200; exit with the log tail if the server dies or times out."""

    async def health() -> int:
        try:
            response = await asyncio.wait_for(http_request(base_url + "/health"), 5)
            response.close()
            return response.status
        except (OSError, asyncio.TimeoutError):
            return 0

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: the server exited with code {proc.returncode}\n{_tail(log)}")
        if asyncio.run(health()) == 200:
            return
        time.sleep(0.1)
    sys.exit(f"error: the server was not healthy after {timeout:g} s\n{_tail(log)}")


def _tail(log: Path, lines: int = 40) -> str:
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"--- last {len(text)} lines of {log} ---\n" + "\n".join(text)


def stop_server(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL to the whole session started for it (the server and any children
    it left behind) if it has not exited after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"server {proc.pid} ignored SIGTERM for {timeout:g} s; killing it", flush=True)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: pgid == pid
    proc.wait()


@contextlib.contextmanager
def launched_server(cmd: list[str], base_url: str, timeout: float, log: Path) -> Iterator[None]:
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True
        )
    try:
        wait_until_ready(proc, base_url, timeout, log)
        yield
    finally:
        stop_server(proc)


def server_command(
    args: argparse.Namespace, model_dir: Path, port: int, max_total: int, overlap: bool
) -> list[str]:
    cmd = [sys.executable, "-m", "radixlm.launch_server", "--model-path", str(model_dir)]
    cmd += ["--port", str(port), "--host", "127.0.0.1", "--num-threads", str(args.num_threads)]
    cmd += ["--max-total-tokens", str(max_total)]
    cmd.append("--enable-overlap-schedule" if overlap else "--disable-overlap-schedule")
    return cmd + shlex.split(args.server_args)


# ---- main -----------------------------------------------------------------------------------
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except unset ones (None / False), whose help says what happens instead."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False):
            return action.help or ""
        return super()._get_help_string(action)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=_HelpFormatter,
    )
    a = p.add_argument_group("server").add_argument
    a("--backend", choices=sorted(BACKENDS), default="radixlm", help="sglang = radixlm")
    a("--base-url", default=DEFAULT_BASE_URL, help="server address")
    a("--host", default=None, help="with --port: use http://HOST:PORT instead of --base-url")
    a(
        "--port",
        type=int,
        default=None,
        help="as --host; with --launch: the servers' port (default: a free one)",
    )
    a("--api-key", default=None, help="sent as 'Authorization: Bearer KEY'")
    a("--model", default=None, help="model name in OpenAI requests; default: first /v1/models id")
    a("--request-timeout", type=float, default=3600.0, help="seconds per request")
    a = p.add_argument_group("dataset").add_argument
    a(
        "--dataset-name",
        choices=["sharegpt", "random", "generated-shared-prefix"],
        default="sharegpt",
        help="workload",
    )
    a("--dataset-path", default=DEFAULT_SHAREGPT, help="ShareGPT JSON, relative to the repo root")
    a(
        "--num-prompts",
        type=int,
        default=None,
        help="default: 100, or all groups x prompts for generated-shared-prefix",
    )
    a("--sharegpt-output-len", type=int, default=None, help="default: the first reply's length")
    a("--random-input-len", type=int, default=256, help="random: prompt tokens")
    a("--random-output-len", type=int, default=64, help="random: output tokens")
    a("--random-range-ratio", type=float, default=1.0, help="lengths uniform in [ratio*len, len]")
    a("--gsp-num-groups", type=int, default=8, help="shared system prompts")
    a("--gsp-prompts-per-group", type=int, default=8, help="questions per system prompt")
    a("--gsp-system-prompt-len", type=int, default=512, help="tokens")
    a("--gsp-question-len", type=int, default=64, help="tokens")
    a("--gsp-output-len", type=int, default=64, help="tokens")
    a("--tokenizer", default=DEFAULT_TOKENIZER, help="relative to the repo root")
    a("--seed", type=int, default=0, help="datasets and arrival times")
    a = p.add_argument_group("load").add_argument
    a("--request-rate", type=float, default=math.inf, help="req/s, Poisson; inf: all at once")
    a(
        "--max-concurrency",
        default=None,
        help="most requests in flight; a comma-separated list (1,4,16) runs once per level",
    )
    a("--warmup-requests", type=int, default=1, help="unmeasured, sequential, <= 16 tokens")
    a = p.add_argument_group("output").add_argument
    a("--output-file", default=None, help="write config + results here as JSON")
    a("--save-requests", action="store_true", help="include per-request results in the JSON")
    a("--plot-file", default=None, help=PLOT_HELP)
    a = p.add_argument_group("--launch: compare overlap scheduling on/off").add_argument
    a("--launch", action="store_true", help="start the server twice (overlap on, off) and compare")
    a("--num-threads", type=int, default=os.cpu_count() or 1, help="server torch threads")
    a(
        "--max-total-tokens",
        type=int,
        default=None,
        help="server KV pool; default: the whole workload + 10%% + 512",
    )
    a("--server-args", default="", help="extra server flags, e.g. --server-args='--dtype bfloat16'")
    a("--server-timeout", type=float, default=600.0, help="seconds to wait for /health")
    a("--model-dir", default=None, help="default: bench/.cache/<shape key>; built if missing")
    args = p.parse_args(argv)
    if args.max_concurrency is not None:
        try:
            args.max_concurrency = [int(c) for c in args.max_concurrency.split(",") if c.strip()]
        except ValueError:
            p.error(f"--max-concurrency {args.max_concurrency!r}: integers, comma-separated")
        if not args.max_concurrency or min(args.max_concurrency) < 1:
            p.error("--max-concurrency must be >= 1")
    for name in ("num_prompts", "num_threads", "max_total_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.request_rate <= 0 or args.warmup_requests < 0 or not 0 < args.random_range_ratio <= 1:
        p.error("need --request-rate > 0, --warmup-requests >= 0, 0 < --random-range-ratio <= 1")
    if args.host or args.port:
        args.base_url = f"http://{args.host or '127.0.0.1'}:{args.port or 30000}"
    args.base_url = args.base_url.rstrip("/")
    return args


def load_tokenizer(path: Path) -> Any:
    import transformers

    transformers.logging.set_verbosity_error()  # no "sequence longer than max length" warnings
    return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)


def build_requests(args: argparse.Namespace, tokenizer: Any) -> list[SampleRequest]:
    n = args.num_prompts or 100
    if args.dataset_name == "sharegpt":
        path = repo_path(args.dataset_path)
        return sharegpt_requests(path, tokenizer, n, args.sharegpt_output_len, args.seed)
    if args.dataset_name == "random":
        return random_requests(
            tokenizer,
            n,
            args.random_input_len,
            args.random_output_len,
            args.random_range_ratio,
            args.seed,
        )
    requests = shared_prefix_requests(
        tokenizer,
        args.gsp_num_groups,
        args.gsp_prompts_per_group,
        args.gsp_system_prompt_len,
        args.gsp_question_len,
        args.gsp_output_len,
        args.seed,
    )
    return requests[: args.num_prompts] if args.num_prompts else requests


def benchmark_server(
    args: argparse.Namespace,
    base_url: str,
    requests: list[SampleRequest],
    tokenizer: Any,
    max_concurrency: int | None = None,
    flush: bool = False,
) -> tuple[Target, BenchmarkRun]:
    """One measured run; ``flush``: empty the server's prefix cache first (sweeps: every level
    starts alike)."""
    target = Target(base_url, args.backend, api_key=args.api_key, timeout=args.request_timeout)
    model = args.model or asyncio.run(resolve_model(target))
    target = replace(target, model=model)
    level = f", max concurrency {max_concurrency}" if max_concurrency else ""
    print(f"benchmarking {base_url} ({args.backend}, model {model!r}{level}) ...", flush=True)
    if flush and not asyncio.run(flush_cache(target)):
        print("note: the server did not flush its cache (POST /flush_cache)", flush=True)
    try:
        run = asyncio.run(
            run_benchmark(
                target,
                requests,
                request_rate=args.request_rate,
                max_concurrency=max_concurrency,
                warmup_requests=args.warmup_requests,
                seed=args.seed,
                tokenizer=tokenizer,
            )
        )
    except RuntimeError as e:
        sys.exit(f"error: {e}")
    return target, run


def _record(
    label: str, target: Target, run: BenchmarkRun, save_requests: bool, max_concurrency: int | None
) -> dict[str, Any]:
    record = {
        "label": label,
        "max_concurrency": max_concurrency,
        "base_url": target.base_url,
        "model": target.model,
        "summary": summarize(run.results, run.duration),
        "server": run.server,
        "quantiles_ms": latency_quantiles(run.results),
    }
    if save_requests:
        record["requests"] = [asdict(r) for r in run.results]
    return record


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    env = environment(args.num_threads if args.launch else 0)
    print(
        f"# command: {env['command']}\n# date: {env['date']}, commit {env['git_commit'][:7]}"
        f"{' (dirty)' if env['git_dirty'] else ''}, python {env['python']}, torch {env['torch']}, "
        f"CPU: {env['cpu']} x {env['cpu_count']}",
        flush=True,
    )
    tokenizer_dir = repo_path(args.tokenizer)
    tokenizer = load_tokenizer(tokenizer_dir)
    try:
        requests = build_requests(args, tokenizer)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    prompt_tokens = sum(r.prompt_len for r in requests)
    print(
        f"workload: {args.dataset_name}, {len(requests)} requests, {prompt_tokens} prompt tokens "
        f"(max {max(r.prompt_len for r in requests)}), {sum(r.output_len for r in requests)} "
        f"output tokens requested; rate {args.request_rate:g} req/s, "
        f"max concurrency {','.join(map(str, args.max_concurrency or ['unlimited']))}",
        flush=True,
    )
    report: dict[str, Any] = {
        "environment": env,
        "args": {**vars(args), "request_rate": str(args.request_rate)},
    }
    levels: list[int | None] = args.max_concurrency or [None]

    def at(level: int | None) -> str:
        return f" (max concurrency {level})" if len(levels) > 1 else ""

    if not args.launch:
        report["runs"] = []
        for level in levels:
            target, run = benchmark_server(
                args, args.base_url, requests, tokenizer, level, len(levels) > 1
            )
            record = _record("server", target, run, args.save_requests, level)
            print_summary(record["summary"], f"Serving Benchmark Result{at(level)}", run.server)
            report["runs"].append(record)
    else:
        model_dir = ensure_model(
            ModelShape(), tokenizer_dir, repo_path(args.model_dir) if args.model_dir else None
        )
        workload = sum(r.prompt_len + r.output_len for r in requests)
        max_total = args.max_total_tokens or int(workload * 1.1) + 512
        log_dir = Path(tempfile.mkdtemp(prefix="radixlm_serving_"))
        runs = []
        for label, overlap in (("overlap", True), ("no-overlap", False)):
            port = args.port or free_port()
            cmd = server_command(args, model_dir, port, max_total, overlap)
            log = log_dir / f"server_{label}.log"
            print(f"[{label}] starting: {shlex.join(cmd)}\n[{label}] log: {log}", flush=True)
            base_url = f"http://127.0.0.1:{port}"
            with launched_server(cmd, base_url, args.server_timeout, log):
                for level in levels:
                    target, run = benchmark_server(
                        args, base_url, requests, tokenizer, level, len(levels) > 1
                    )
                    record = _record(label, target, run, args.save_requests, level)
                    runs.append({**record, "server_command": cmd})
                    title = f"{label} ({args.backend}){at(level)}"
                    print_summary(record["summary"], title, run.server)
        ratios = print_comparison(runs)
        # one level: {output_throughput, request_throughput}; a sweep: one such dict per level
        report.update(
            runs=runs,
            ratios_overlap_over_no_overlap=ratios
            if len(ratios) > 1
            else {k: v for k, v in ratios[0].items() if k != "max_concurrency"},
        )
        report["model"] = {"dir": str(model_dir), "max_total_tokens": max_total}
    if args.output_file:
        Path(args.output_file).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.output_file}")
    write_plot("serving", report, plot_path(args.plot_file, args.output_file))


if __name__ == "__main__":
    main()
