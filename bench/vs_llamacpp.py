"""RadixLM against llama.cpp's ``llama-server``: same model, same threads, same streaming client.

Model: the random-weight Llama of ``bench/common.py`` with UNTIED embeddings (hidden 768, 12
layers, 12/4 heads, FFN 2048, GPT-2 vocabulary from ``--tokenizer``; built once in
``bench/.cache/``). llama.cpp: ``llama-server`` built from the sources vendored in the
``llama-cpp-python`` sdist (``--llama-cpp-python``, default 0.3.36 = llama.cpp 0c1e570) and the
checkpoint converted to GGUF f32 / bf16 / q8_0 with that sdist's ``convert_hf_to_gguf.py``; see
``bench/llamacpp.py``. Both are cached under ``bench/.cache/llamacpp/``: the first run downloads
the sdist, builds under ``nice -n 19`` (about 9 minutes on 2 cores) and pip-installs what the
converter imports into the running environment: the sdist's own ``gguf-py`` (with ``requests``
etc. from PyPI) and ``sentencepiece``. Later runs reuse all of it.

Servers, each started fresh for every (pass, precision, workload), so no workload sees another's
prefix cache: RadixLM ``python -m radixlm.launch_server --num-threads T --max-total-tokens C
--dtype D`` (+ ``--radixlm-args``), llama-server ``-t T -tb T -c C -np 8 --metrics``
(+ ``--llamacpp-args``). Within a pass the two systems run back to back on each workload, and
which goes first alternates from pass to pass (``--passes``, default 2).

Precisions (columns): ``--dtypes float32,bfloat16`` compares RadixLM ``--dtype float32`` with
GGUF f32 and ``--dtype bfloat16`` with GGUF bf16. ``--systems`` may add ``llama-server-q8_0``
(llama-server on the q8_0 GGUF, no RadixLM counterpart unless a variant names q8_0), or leave
out either side. ``--radixlm-variants "NAME:GGUF:ARGS;..."`` adds columns: RadixLM with ARGS
against llama-server on GGUF (f32, bf16 or q8_0), e.g.
``--radixlm-variants "w8a16:q8_0:--dtype bfloat16 --quantization w8a16"``.

Client: ``bench/serving.py``'s HTTP client, ``POST /v1/completions`` with the prompt text,
streamed, greedy, ``ignore_eos`` (both servers honour it), after one warm-up request (a prompt
of its own, so it leaves nothing for the workload to reuse). Workloads
(``--workloads``; ``-N`` = N concurrent clients, all requests queued at once):

* ``mmlu-1``, ``mmlu-8``: 5-shot MMLU (``prefix_sharing.py``'s loader), ``--mmlu-subjects`` x
  ``--mmlu-questions``, grouped by subject; 1 output token. ``mmlu-interleaved-8``: the same
  prompts with subjects interleaved (round robin), 8 clients.
* ``sharegpt-1`` (first ``--sharegpt-prompts-1``), ``sharegpt-8`` (``--sharegpt-prompts``):
  ShareGPT first turns, ``--sharegpt-output-len`` (64) tokens each.
* ``mtbench-8``: ``--mt-questions`` MT-bench conversations, two turns of ``--mt-output-len``
  tokens; turn 2 = turn-1 prompt + that system's own answer + the second question.
* ``json-8``: SGLang's character prompts (``--json-names``) constrained by
  ``json_decoding.py``'s character schema, sent as the ``json_schema`` field of
  ``/v1/completions`` (both servers take it there), EOS not ignored (the grammar ends the
  output), at most ``--json-max-tokens``. The warm-up request compiles the grammar. NOTE:
  RadixLM decodes the schema's compact layout, llama.cpp's schema grammar admits whitespace
  between tokens, so output lengths differ: compare req/s here rather than tok/s.

Reported per workload and precision, each pass and the median over passes: output tok/s, req/s,
TTFT and TPOT p50/p99 (ms), prompt tokens (client tokenizer) and prompt tokens computed by the
server over the measured run (RadixLM: ``/get_server_info`` ``scheduler.prefill_computed_tokens``,
which also counts jump-forward re-extends; llama-server: ``llamacpp:prompt_tokens_total`` of
``/metrics``, "prompt tokens processed, excluding cached tokens"; n/a where unavailable), and the
ratios RadixLM / llama-server of req/s and output tok/s (the median ratio is the median of the
per-pass ratios). Memory bandwidth (a 512 MB torch read with ``--num-threads`` threads, best of
10, before and after the passes) gives the weight-streaming bound of a batch-1 decode step:
bytes of every linear weight plus the LM head (not the embedding) in the column's GGUF format,
over the bandwidth; it is set against the ``sharegpt-1`` TPOT p50 of each system.

Writes ``--output-file`` (JSON), ``--report-file`` (this text, default: the JSON path with .txt)
and ``--plot-file`` (PNG of the median req/s ratios; default: the JSON path with .png; needs
matplotlib: ``pip install -e .[bench]``). Full run (from the repo root, on an otherwise idle
machine; roughly an hour on 2 cores after the first build):

    python bench/vs_llamacpp.py --passes 2 --dtypes float32,bfloat16 \\
        --output-file bench/results/vs_llamacpp_<date>.json
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import llamacpp
from common import (
    DEFAULT_SHAREGPT,
    DEFAULT_TOKENIZER,
    MB,
    ModelShape,
    Tee,
    check_args,
    ensure_model,
    environment,
    print_header,
    repo_path,
)
from json_decoding import CHARACTER_SCHEMA, DEFAULT_NAMES, PROMPT
from prefix_sharing import DEFAULT_MMLU, DEFAULT_MT_BENCH, load_mmlu, load_multiturn
from serving import (
    BACKENDS,
    Backend,
    SampleRequest,
    Target,
    http_request,
    launched_server,
    resolve_model,
    run_benchmark,
    send_request,
    sharegpt_requests,
    summarize,
)

from radixlm_lang.backend.runtime_endpoint import free_port

WORKLOADS = (
    "mmlu-1",
    "mmlu-8",
    "mmlu-interleaved-8",
    "sharegpt-1",
    "sharegpt-8",
    "mtbench-8",
    "json-8",
)
SYSTEMS = ("radixlm", "llama-server", "llama-server-q8_0")
DTYPE_GGUF = {"float32": "f32", "bfloat16": "bf16"}
BYTES_PER_WEIGHT = {"f32": 4.0, "bf16": 2.0, "q8_0": 34 / 32}  # q8_0: 32 int8 + an fp16 scale
WARMUP_TOKENS = 16
# Not a prefix of any workload prompt, so the warm-up leaves nothing the measured run can reuse.
WARMUP_PROMPT = "A warm-up request, not part of the workload.\n"
POSITIVE = (
    "passes num_threads max_total_tokens parallel clients mmlu_subjects mmlu_questions "
    "sharegpt_prompts sharegpt_prompts_1 sharegpt_output_len mt_questions mt_output_len "
    "json_prompts json_max_tokens"
).split()


def _json_build(s: SampleRequest, model: str) -> tuple[str, dict[str, Any]]:
    path, payload = BACKENDS["openai"].build(s, model)
    return path, {**payload, "json_schema": CHARACTER_SCHEMA, "ignore_eos": False}


# NOTE: serving.py's client looks backends up by name; this one adds the schema to its request.
BACKENDS.setdefault("openai-json-schema", Backend(_json_build, BACKENDS["openai"].parse))


@dataclass(frozen=True)
class Column:
    """One precision compared: RadixLM with ``radixlm_args`` against llama-server on ``gguf``."""

    name: str
    gguf: str  # one of llamacpp.OUTTYPES
    radixlm_args: str | None  # None: llama-server only


@dataclass(frozen=True)
class Workload:
    name: str
    clients: int
    requests: list[SampleRequest]
    followups: list[str] | None = None  # mtbench: turn-2 text appended after the answer
    backend: str = "openai"


# ---- workloads ------------------------------------------------------------------------------
def _requests(tok: Any, prompts: list[str], output_len: int) -> list[SampleRequest]:
    return [SampleRequest(p, len(tok.encode(p)), output_len) for p in prompts]


def build_workloads(args: argparse.Namespace, tok: Any) -> list[Workload]:
    def text(ids: list[int]) -> str:
        return tok.decode(ids, clean_up_tokenization_spaces=False)

    out: list[Workload] = []
    chosen, clients = args.workloads, args.clients
    if any(w.startswith("mmlu") for w in chosen):
        ns = argparse.Namespace(**vars(args), mmlu_max_new_tokens=1)
        mmlu, _ = load_mmlu(repo_path(args.mmlu_dir), tok, ns)
        grouped = _requests(tok, [text(p) for p in mmlu.prompts], 1)
        q = args.mmlu_questions  # grouped[s * q + i]: question i of subject s
        interleaved = [grouped[s * q + i] for i in range(q) for s in range(args.mmlu_subjects)]
        for name, reqs, n in (
            ("mmlu-1", grouped, 1),
            ("mmlu-8", grouped, clients),
            ("mmlu-interleaved-8", interleaved, clients),
        ):
            out.append(Workload(name, n, reqs))
    if "sharegpt-1" in chosen or "sharegpt-8" in chosen:
        n = max(args.sharegpt_prompts, args.sharegpt_prompts_1)
        path = repo_path(args.sharegpt)
        reqs = sharegpt_requests(path, tok, n, args.sharegpt_output_len, args.seed)
        out.append(Workload("sharegpt-1", 1, reqs[: args.sharegpt_prompts_1]))
        out.append(Workload("sharegpt-8", clients, reqs[: args.sharegpt_prompts]))
    if "mtbench-8" in chosen:
        mt = load_multiturn(repo_path(args.mt_bench), tok, args.mt_questions, args.mt_output_len)
        reqs = _requests(tok, [text(p) for p in mt.prompts], args.mt_output_len)
        out.append(Workload("mtbench-8", clients, reqs, [text(f) for f in mt.followups or []]))
    if "json-8" in chosen:
        lines = repo_path(args.json_names).read_text().splitlines()
        names = [n.strip() for n in lines if n.strip()][: args.json_prompts]
        if len(names) < args.json_prompts:
            sys.exit(f"error: {args.json_names} has {len(names)} names < --json-prompts")
        prompts = [PROMPT.format(name=n) for n in names]
        reqs = _requests(tok, prompts, args.json_max_tokens)
        out.append(Workload("json-8", clients, reqs, backend="openai-json-schema"))
    return [w for w in out if w.name in chosen]


# ---- one server, one workload ---------------------------------------------------------------
async def prompt_tokens_computed(target: Target, system: str) -> float | None:
    """The server's cumulative count of prompt tokens it ran through the model (not cached)."""
    path = "/get_server_info" if system == "radixlm" else "/metrics"
    try:
        response = await http_request(target.base_url + path)
        try:
            body = (await response.read()).decode()
        finally:
            response.close()
    except (OSError, EOFError):
        return None
    if response.status != 200:
        return None
    if system == "radixlm":
        value = (json.loads(body).get("scheduler") or {}).get("prefill_computed_tokens")
        return float(value) if isinstance(value, (int, float)) else None
    for line in body.splitlines():
        if line.startswith("llamacpp:prompt_tokens_total "):
            return float(line.split()[1])
    return None


async def drive(base_url: str, system: str, w: Workload, tok: Any, timeout: float) -> dict:
    """Warm up, then run ``w`` (both turns for mtbench) and summarize the measured requests."""
    target = Target(base_url, w.backend, timeout=timeout)
    target = replace(target, model=await resolve_model(target))
    tokens = min(w.requests[0].output_len, WARMUP_TOKENS)
    warm = await send_request(target, _requests(tok, [WARMUP_PROMPT], tokens)[0])
    if not warm.success:
        sys.exit(f"error: {system} warm-up request failed: {warm.error}")
    before = await prompt_tokens_computed(target, system)
    run = await run_benchmark(
        target, w.requests, max_concurrency=w.clients, warmup_requests=0, tokenizer=tok
    )
    results, duration = list(run.results), run.duration
    if w.followups:  # turn 2 continues each conversation with this system's own answer
        turn2 = [
            r.prompt + res.generated_text + f
            for r, res, f in zip(w.requests, run.results, w.followups)
            if res.success
        ]
        run2 = await run_benchmark(
            target,
            _requests(tok, turn2, w.requests[0].output_len),
            max_concurrency=w.clients,
            warmup_requests=0,
            tokenizer=tok,
        )
        results += run2.results
        duration += run2.duration
    after = await prompt_tokens_computed(target, system)
    computed = after - before if before is not None and after is not None else None
    return {"summary": summarize(results, duration), "prompt_tokens_computed": computed}


def server_command(
    args: argparse.Namespace, system: str, col: Column, model_dir: Path, server: Path, port: int
) -> list[str]:
    """RadixLM with ``col``'s flags on ``model_dir``, or ``server`` (llama-server) on ``col``'s
    GGUF; both get ``--num-threads`` threads and a ``--max-total-tokens`` token context."""
    threads, ctx = str(args.num_threads), str(args.max_total_tokens)
    common = ["--host", "127.0.0.1", "--port", str(port)]
    if system == "radixlm":
        cmd = [sys.executable, "-m", "radixlm.launch_server", "--model-path", str(model_dir)]
        cmd += [*common, "--num-threads", threads, "--max-total-tokens", ctx]
        return cmd + shlex.split(col.radixlm_args or "") + shlex.split(args.radixlm_args)
    cmd = [str(server), "-m", str(model_dir)]
    cmd += [*common, "-t", threads, "-tb", threads, "-c", ctx, "-np", str(args.parallel)]
    return cmd + ["--metrics", *shlex.split(args.llamacpp_args)]


# ---- measurements ---------------------------------------------------------------------------
def memory_bandwidth(threads: int, mb: int = 512, repeats: int = 10) -> float:
    """GB/s of a torch sum over a ``mb`` MB float32 tensor with ``threads`` threads, best run."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(mb * MB // 4)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def streamed_weights(shape: ModelShape, vocab: int) -> int:
    """Weights a batch-1 decode step reads: every linear of every layer plus the LM head."""
    head_dim = shape.hidden // shape.heads
    attn = 2 * shape.hidden * shape.hidden + 2 * shape.hidden * shape.kv_heads * head_dim
    mlp = 3 * shape.hidden * shape.intermediate
    return shape.layers * (attn + mlp) + vocab * shape.hidden


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    if not a or not b or not b["summary"][key]:
        return None
    return a["summary"][key] / b["summary"][key]


# ---- reporting ------------------------------------------------------------------------------


def _f(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


HEAD = (
    f"{'workload':<19} {'prec':<12} {'system':<13} {'req/s':>7} {'tok/s':>7} {'TTFT p50':>8} "
    f"{'p99':>7} {'TPOT p50':>8} {'p99':>6} {'prompt':>7} {'computed':>8} {'out':>6} {'fail':>4}"
)


def run_line(workload: str, prec: str, system: str, rec: dict) -> str:
    s = rec["summary"]
    return (
        f"{workload:<19} {prec:<12} {system:<13} {s['request_throughput']:>7.3f} "
        f"{s['output_throughput']:>7.2f} {_f(s['median_ttft_ms'], '.0f'):>8} "
        f"{_f(s['p99_ttft_ms'], '.0f'):>7} {_f(s['median_tpot_ms'], '.1f'):>8} "
        f"{_f(s['p99_tpot_ms'], '.1f'):>6} {_f(s['total_input_tokens'], '.0f'):>7} "
        f"{_f(rec['prompt_tokens_computed'], '.0f'):>8} {_f(s['total_output_tokens'], '.0f'):>6} "
        f"{s['failed']:>4}"
    )


def ratio_line(req_s: float | None, tok_s: float | None) -> str:
    req, tok = _f(req_s, ".2f") + "x", _f(tok_s, ".2f") + "x"
    return f"{'':<19} {'':<12} {'RadixLM/llama':<13} {req:>7} {tok:>7}"


def median_record(recs: list[dict]) -> dict | None:
    """Every summary number as its median over passes (failures summed)."""
    if not recs:
        return None
    keys = [k for k in recs[0]["summary"] if k != "errors"]
    summary = {k: _median([r["summary"][k] for r in recs]) for k in keys}
    summary["failed"] = sum(r["summary"]["failed"] for r in recs)
    computed = _median([r["prompt_tokens_computed"] for r in recs])
    return {"summary": summary, "prompt_tokens_computed": computed}


def plot(path: Path, ratios: dict, columns: list[Column], workloads: list[str], title: str) -> None:
    try:
        import matplotlib
    except ImportError:
        print(f"no plot: matplotlib is not installed (pip install -e .[bench]); not writing {path}")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    cols = [c for c in columns if any((c.name, w) in ratios for w in workloads)]
    width = 0.8 / max(1, len(cols))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.4 * len(workloads)), 4.5))
    for j, col in enumerate(cols):
        xs = [i + (j - (len(cols) - 1) / 2) * width for i in range(len(workloads))]
        per_pass = [[v for v in ratios.get((col.name, w), []) if v is not None] for w in workloads]
        medians = [_median(p) if p else math.nan for p in per_pass]
        bars = ax.bar(xs, medians, width, label=col.name)
        ax.bar_label(bars, labels=[_f(m if m == m else None, ".2f") for m in medians], fontsize=7)
        for x, p in zip(xs, per_pass):
            ax.plot([x] * len(p), p, "k.", markersize=3)
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    ax.set_yscale("log")  # ratios: 2x and 0.5x are equally far from parity
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
    ax.set_xticks(range(len(workloads)), workloads, rotation=20)
    ax.set_ylabel("RadixLM / llama-server, req/s")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


# ---- main -----------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a(
        "--cpu-hog",
        type=int,
        default=None,
        metavar="CORE",
        help="keep a busy-loop process pinned to this core for the whole run (taskset), to "
        "measure how each server degrades when another process takes a core",
    )
    a("--passes", type=int, default=2, help="alternating passes; the median is reported")
    a("--dtypes", default="float32,bfloat16", help="RadixLM --dtype vs GGUF f32 / bf16")
    a("--systems", default="radixlm,llama-server", help=f"comma-separated from {SYSTEMS}")
    a("--radixlm-variants", default="", help="extra columns 'NAME:GGUF:RADIXLM ARGS;...'")
    a("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    a("--radixlm-args", default="", help="extra flags for every RadixLM server")
    a("--llamacpp-args", default="", help="extra flags for every llama-server")
    a("--num-threads", type=int, default=2, help="threads of each server (and the bandwidth read)")
    a("--max-total-tokens", type=int, default=16384, help="RadixLM KV pool = llama-server -c")
    a("--parallel", type=int, default=8, help="llama-server -np (slots)")
    a("--clients", type=int, default=8, help="concurrent clients of the *-8 workloads")
    a("--mmlu-subjects", type=int, default=4)
    a("--mmlu-questions", type=int, default=20, help="test questions per subject")
    a("--mmlu-max-prompt-len", type=int, default=1536, help="longer questions are skipped")
    a("--sharegpt-prompts", type=int, default=64, help="sharegpt-8 requests")
    a("--sharegpt-prompts-1", type=int, default=16, help="sharegpt-1 requests (the first ones)")
    a("--sharegpt-output-len", type=int, default=64)
    a("--mt-questions", type=int, default=40, help="two-turn conversations")
    a("--mt-output-len", type=int, default=64, help="tokens per turn")
    a("--json-prompts", type=int, default=32)
    a("--json-max-tokens", type=int, default=256)
    a("--seed", type=int, default=0, help="ShareGPT sample")
    a("--tokenizer", default=DEFAULT_TOKENIZER, help="relative to the repo root")
    a("--sharegpt", default=DEFAULT_SHAREGPT, help="ShareGPT JSON")
    a("--mmlu-dir", default=DEFAULT_MMLU, help="with dev/ and test/ CSVs")
    a("--mt-bench", default=DEFAULT_MT_BENCH, help="MT-bench question.jsonl")
    a("--json-names", default=DEFAULT_NAMES, help="SGLang json_jump_forward dataset.txt")
    a("--model-dir", default=None, help="default: bench/.cache/<shape key>; built if missing")
    a("--llama-cpp-python", default=llamacpp.LLAMA_CPP_PYTHON, help="sdist version")
    a("--build-jobs", type=int, default=None, help="default: one per CPU (under nice -n 19)")
    a("--server-timeout", type=float, default=600.0, help="seconds to wait for /health")
    a("--request-timeout", type=float, default=3600.0, help="seconds per request")
    a("--output-file", default=None, help="JSON of every number")
    a("--report-file", default=None, help="text report; default: --output-file with .txt")
    a("--plot-file", default=None, help="PNG of the ratios; default: --output-file with .png")
    args = p.parse_args()
    check_args(
        p,
        args,
        {"dtypes": tuple(DTYPE_GGUF), "systems": SYSTEMS, "workloads": WORKLOADS},
        tuple(POSITIVE),
    )
    paths = {"tokenizer": "the GPT-2 tokenizer dir"}
    need = {w.split("-")[0] for w in args.workloads}
    paths.update(
        {
            k: v
            for k, v, w in (
                ("sharegpt", "the ShareGPT JSON", "sharegpt"),
                ("mmlu_dir", "the MMLU dir (dev/, test/)", "mmlu"),
                ("mt_bench", "MT-bench question.jsonl", "mtbench"),
                ("json_names", "SGLang's json_jump_forward dataset.txt", "json"),
            )
            if w in need
        }
    )
    for name, what in paths.items():
        if not repo_path(getattr(args, name)).exists():
            p.error(
                f"--{name.replace('_', '-')} {getattr(args, name)}: not found "
                f"({repo_path(getattr(args, name))}); pass {what}"
            )
    args.columns = columns(p, args)
    if args.output_file:
        out = Path(args.output_file)
        args.report_file = args.report_file or str(out.with_suffix(".txt"))
        args.plot_file = args.plot_file or str(out.with_suffix(".png"))
    for path in (args.output_file, args.report_file, args.plot_file):
        if path:  # fail now, not after the run
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    return args


def columns(p: argparse.ArgumentParser, args: argparse.Namespace) -> list[Column]:
    cols = [Column(d, DTYPE_GGUF[d], f"--dtype {d}") for d in args.dtypes]
    for spec in filter(None, (s.strip() for s in args.radixlm_variants.split(";"))):
        name, _, rest = spec.partition(":")
        gguf, _, radix = rest.partition(":")
        if not name or gguf not in llamacpp.OUTTYPES or name in {c.name for c in cols}:
            p.error(
                f"--radixlm-variants: bad {spec!r}; want NAME:GGUF:ARGS with a new NAME and "
                f"GGUF one of {', '.join(llamacpp.OUTTYPES)}"
            )
        cols.append(Column(name, gguf, radix))
    if "llama-server-q8_0" in args.systems and all(c.gguf != "q8_0" for c in cols):
        cols.append(Column("q8_0", "q8_0", None))
    return cols


def main() -> None:
    args = parse_args()
    tee = Tee(sys.stdout)
    sys.stdout = tee  # type: ignore[assignment]
    # SIGTERM unwinds like Ctrl-C, so every server this run started is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    env = environment(args.num_threads)
    print_header(env, args.num_threads)
    from serving import load_tokenizer

    tok_dir = repo_path(args.tokenizer)
    tok = load_tokenizer(tok_dir)
    shape = ModelShape(tied=False)
    model_dir = ensure_model(shape, tok_dir, repo_path(args.model_dir) if args.model_dir else None)
    meta = {"dir": str(model_dir), **json.loads((model_dir / "bench_model.json").read_text())}
    run_radix = "radixlm" in args.systems
    run_llama = any(s.startswith("llama-server") for s in args.systems)
    cols = [c for c in args.columns if run_llama or (run_radix and c.radixlm_args is not None)]
    ggufs: dict[str, Path] = {}
    tool = None
    if run_llama:
        t0 = time.perf_counter()
        tool = llamacpp.build(args.llama_cpp_python, args.build_jobs)
        for c in cols:
            ggufs.setdefault(c.gguf, llamacpp.convert(tool, model_dir, c.gguf))
        print(f"llama.cpp ready in {time.perf_counter() - t0:.0f} s: {tool.server}")
    tool_server = tool.server if tool else Path()
    print(
        f"model {model_dir} ({meta['num_params'] / 1e6:.1f}M params, untied); llama.cpp "
        f"{tool.commit[:7] if tool else '-'} (llama-cpp-python {args.llama_cpp_python})"
    )
    workloads = build_workloads(args, tok)
    for w in workloads:
        turns = 2 if w.followups else 1
        print(
            f"  {w.name:<19} {len(w.requests) * turns:>4} requests, {w.clients} client(s), "
            f"{sum(r.prompt_len for r in w.requests)} first-turn prompt tokens, "
            f"{w.requests[0].output_len} max output tokens"
        )
    bandwidth = [memory_bandwidth(args.num_threads)]
    print(f"memory bandwidth: {bandwidth[0]:.1f} GB/s (512 MB read, {args.num_threads} threads)")

    if args.cpu_hog is not None:
        hog = subprocess.Popen(
            ["taskset", "-c", str(args.cpu_hog), sys.executable, "-c", "while True: pass"]
        )
        atexit.register(hog.kill)
        print(f"CPU hog: pid {hog.pid} busy on core {args.cpu_hog} for the whole run")

    log_dir = Path(tempfile.mkdtemp(prefix="radixlm_vs_llamacpp_"))
    print(f"server logs: {log_dir}", flush=True)
    runs: dict[tuple[str, str, str], list[dict]] = {}  # (system, column or gguf, workload)
    commands: dict[str, list[str]] = {}
    for k in range(args.passes):
        for col in cols:
            for w in workloads:
                plan = []
                if run_radix and col.radixlm_args is not None:
                    plan.append(("radixlm", col.name))
                llama_key = ("llama-server", col.gguf, w.name)
                if run_llama and len(runs.get(llama_key, [])) == k:
                    plan.append(("llama-server", col.gguf))
                for system, key in plan if k % 2 == 0 else plan[::-1]:
                    port = free_port()
                    served = model_dir if system == "radixlm" else ggufs[col.gguf]
                    cmd = server_command(args, system, col, served, tool_server, port)
                    commands[f"{system}:{key}"] = cmd
                    log = log_dir / f"{system}-{key}-{w.name}-pass{k + 1}.log"
                    load = os.getloadavg()[0]
                    print(f"[pass {k + 1}] {w.name} {key} {system} (load {load:.2f}) ...", end="")
                    url = f"http://127.0.0.1:{port}"
                    with launched_server(cmd, url, args.server_timeout, log):
                        rec = asyncio.run(drive(url, system, w, tok, args.request_timeout))
                    rec.update(load_before=load, server_log=str(log))
                    s = rec["summary"]
                    print(
                        f" {s['request_throughput']:.3f} req/s, {s['output_throughput']:.1f} "
                        f"tok/s, TPOT p50 {_f(s['median_tpot_ms'], '.1f')} ms, "
                        f"{s['failed']} failed {list(s['errors'])[:1]}",
                        flush=True,
                    )
                    runs.setdefault((system, key, w.name), []).append(rec)
    bandwidth.append(memory_bandwidth(args.num_threads))
    report(args, env, cols, workloads, runs, bandwidth, shape, len(tok), meta, commands, tool)
    if args.report_file:
        Path(args.report_file).write_text("".join(tee.parts))
        sys.stdout = tee.stream
        print(f"wrote {args.report_file}")
    failed = sum(r["summary"]["failed"] for recs in runs.values() for r in recs)
    if failed:
        sys.exit(f"error: {failed} requests failed (see the tables and server logs)")


def report(
    args: argparse.Namespace,
    env: dict,
    cols: list[Column],
    workloads: list[Workload],
    runs: dict,
    bandwidth: list[float],
    shape: ModelShape,
    vocab: int,
    meta: dict,
    commands: dict,
    tool: llamacpp.LlamaCpp | None,
) -> None:
    """Print the per-pass and median tables and the bound; write the JSON and the plot."""

    def pair(col: Column, w: str, k: int | None) -> tuple[dict | None, dict | None]:
        r, ll = runs.get(("radixlm", col.name, w)), runs.get(("llama-server", col.gguf, w))
        if k is None:
            return (median_record(r) if r else None), (median_record(ll) if ll else None)
        return (r[k] if r and k < len(r) else None), (ll[k] if ll and k < len(ll) else None)

    # Per (column, workload): each pass's ratio RadixLM / llama-server (None where one is missing).
    ratios: dict[tuple[str, str], list[float | None]] = {}
    tok_ratios: dict[tuple[str, str], list[float | None]] = {}
    for col in cols:
        for w in workloads:
            pairs = [pair(col, w.name, k) for k in range(args.passes)]
            req = [_ratio(a, b, "request_throughput") for a, b in pairs]
            if any(v is not None for v in req):
                ratios[col.name, w.name] = req
                tok_ratios[col.name, w.name] = [_ratio(a, b, "output_throughput") for a, b in pairs]
    for k in [*range(args.passes), None]:
        title = f"pass {k + 1}" if k is not None else f"median of {args.passes} passes"
        print(f"\n{title} (ms; prompt = client-tokenizer tokens, computed = server's count)")
        print(HEAD + "\n" + "-" * len(HEAD))
        for w in workloads:
            for col in cols:
                a, b = pair(col, w.name, k)
                for system, rec in (("radixlm", a), ("llama-server", b)):
                    if rec:
                        print(run_line(w.name, col.name, system, rec))
                if a and b:
                    key = (col.name, w.name)
                    none = [None] * args.passes
                    req, tok = ratios.get(key, none), tok_ratios.get(key, none)
                    shown = (_median(req), _median(tok)) if k is None else (req[k], tok[k])
                    print(ratio_line(*shown))
    print("(ratio line: RadixLM / llama-server of req/s, then of output tok/s)")

    bw = max(bandwidth)
    weights = streamed_weights(shape, vocab)
    print(
        f"\nweight-streaming bound (batch-1 decode step: {weights / 1e6:.1f}M linear + LM head "
        f"weights; bandwidth {bw:.1f} GB/s, best of before {bandwidth[0]:.1f} / after "
        f"{bandwidth[1]:.1f})"
    )
    bound = {}
    for col in cols:
        ms = weights * BYTES_PER_WEIGHT[col.gguf] / (bw * 1e9) * 1e3
        a, b = pair(col, "sharegpt-1", None)
        got = {
            s: r["summary"]["median_tpot_ms"] if r else None
            for s, r in (("radixlm", a), ("llama-server", b))
        }
        bound[col.name] = {"bound_ms": ms, **{f"{s}_tpot_p50_ms": v for s, v in got.items()}}
        shown = ", ".join(
            f"{s} TPOT p50 {v:.1f} ms ({v / ms:.1f}x bound)" for s, v in got.items() if v
        )
        shown = shown or "not run"
        print(f"  {col.name:<12} ({col.gguf}) bound {ms:.1f} ms; sharegpt-1: {shown}")

    if args.output_file:
        out = {
            "environment": env,
            "args": {k: v for k, v in vars(args).items() if k != "columns"},
            "columns": [asdict(c) for c in cols],
            "model": meta,
            "llama_cpp": {
                "llama_cpp_python": args.llama_cpp_python,
                "commit": tool.commit if tool else None,
                "cmake_flags": list(llamacpp.CMAKE_FLAGS),
            },
            "server_commands": commands,
            "workloads": {
                w.name: {
                    "requests": len(w.requests) * (2 if w.followups else 1),
                    "clients": w.clients,
                    "first_turn_prompt_tokens": sum(r.prompt_len for r in w.requests),
                    "max_output_tokens": w.requests[0].output_len,
                }
                for w in workloads
            },
            "bandwidth_gb_s": bandwidth,
            "streamed_weights": weights,
            "batch1_bound": bound,
            "runs": {"|".join(key): recs for key, recs in runs.items()},
            "ratios_req_s": {"|".join(key): v for key, v in ratios.items()},
            "ratios_output_tok_s": {"|".join(key): v for key, v in tok_ratios.items()},
        }
        Path(args.output_file).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.output_file}")
    if args.plot_file and ratios:
        title = (
            f"RadixLM {env['git_commit'][:7]} vs llama.cpp {(tool.commit if tool else '')[:7]}, "
            f"{args.num_threads} threads, {env['cpu']}\nmedian of {args.passes} passes; "
            "dots: each pass"
        )
        plot(Path(args.plot_file), ratios, cols, [w.name for w in workloads], title)


if __name__ == "__main__":
    main()
