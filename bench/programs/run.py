"""Program benchmarks in the style of the SGLang paper, written with ``radixlm_lang``: RadixLM's
server with the radix cache on vs off, plus MMLU through the OpenAI-compatible API.

Programs (one module each in ``bench/programs/``), ``--num-programs`` runs of each:

* ``mmlu``: k-shot MMLU (``--mmlu-shots`` 5, ``--mmlu-subjects`` 2), ``select`` among A-D.
* ``hellaswag``: k-shot HellaSwag (``--hellaswag-shots`` 5), ``select`` among the 4 endings.
* ``tree_of_thought``: GSM8K seed -> ``gen`` a question -> ``fork(3)`` x (plan + work) ->
  ``join`` -> ``select`` the best branch.
* ``multi_turn_chat``: ``--chat-turns`` (4) MT-bench user turns, a ``gen`` per assistant turn.
* ``json_extraction``: a ShareGPT message -> ``gen(json_schema=...)`` with 5 bounded fields.

Systems: ``on`` = ``RuntimeEndpoint`` on our server (``python -m radixlm.launch_server`` via
``radixlm_lang.Runtime``) with the radix cache; ``off`` = a second server with
``--disable-radix-cache``; ``openai`` = the MMLU program through ``radixlm_lang.OpenAI(...,
is_chat_model=False)`` against the ``on`` server's ``/v1`` (``select`` there scores choices
with ``echo=True, logprobs=1``, which needs logprobs of every prompt token, so the server
cannot serve the prompt from its cache). Both servers run the same model (default: the
120M-param random-weight Llama of ``bench/common.py``, fp32), KV pool and ``--threads``; both
are started up front and sit idle while the other works, and the systems alternate per
program (each round: on, off, openai), so slow drifts of a shared machine hit all alike.

Each timed run: ``flush_cache``, one untimed warm-up program (first-request costs such as a
JSON schema's grammar compilation stay out), ``flush_cache``, then ``run_batch`` over all
arguments with ``--num-threads`` concurrent programs, greedy (temperature 0). Reported:
programs/s, the server's prefix-cache hit rate over the run (``/get_server_info`` ->
``scheduler.prefix_cache`` hit / queried token deltas), prompt and prefill-computed tokens per
program, requests per program, the on/off ratio, a quality metric and how many programs ended
with exactly the same text as on the cache-off server. The model has random weights, so the
quality metrics (MMLU / HellaSwag accuracy ~ chance) say nothing about the model; they only
show that the programs ran end to end. With ``--repeats`` > 1 the median round is reported.

Default command (run from the repo root; ~4 min on a quiet 2-core machine):

    python bench/programs/run.py --json-out bench/results/programs_<date>.json

With ``--json-out``, a plot beside it (``--plot-file``; ``bench/plots.py``): programs/s per program
and system (every round a dot) and the server's prefix-cache hit rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# bench/ (for common.py), and the repo root: the venv's editable install registered radixlm_lang
# as a namespace package (installed before it had an __init__.py), so outside the repo root
# ``import radixlm_lang`` finds an empty package unless the real one comes first on sys.path.
sys.path[1:1] = [str(Path(__file__).resolve().parents[i]) for i in (1, 2)]

import hellaswag  # noqa: E402
import json_extraction  # noqa: E402
import mmlu  # noqa: E402
import multi_turn_chat  # noqa: E402
import tree_of_thought  # noqa: E402
from base import Workload  # noqa: E402
from common import (  # noqa: E402
    CACHE_ROOT,
    DEFAULT_SHAREGPT,
    DEFAULT_TOKENIZER,
    ModelShape,
    check_args,
    ensure_model,
    environment,
    print_header,
    repo_path,
)
from plots import PLOT_HELP, plot_path, write_plot  # noqa: E402

PROGRAMS = {
    "mmlu": mmlu,
    "hellaswag": hellaswag,
    "tree_of_thought": tree_of_thought,
    "multi_turn_chat": multi_turn_chat,
    "json_extraction": json_extraction,
}
SYSTEMS = {"on": "native, cache on", "off": "native, cache off", "openai": "OpenAI API, cache on"}
# Monotonic scheduler counters (``/get_server_info`` -> ``scheduler``) reported as deltas.
COUNTERS = (
    "queried_tokens",
    "hit_tokens",
    "prefill_computed_tokens",
    "generated_tokens",
    "num_finished_requests",
    "num_retractions",
    "forward_seconds",
)
POSITIVE = (
    "num_programs num_threads threads repeats max_total_tokens max_prompt_len mmlu_shots "
    "mmlu_subjects hellaswag_shots tot_question_tokens tot_plan_tokens tot_work_tokens "
    "chat_turns chat_answer_tokens json_doc_tokens json_max_tokens"
).split()


# ---- servers --------------------------------------------------------------------------------
@dataclass
class Server:
    """One launched server (``log``: its stdout and stderr)."""

    name: str  # "on" / "off"
    runtime: Any  # radixlm_lang.Runtime
    log: Path

    @property
    def endpoint(self) -> Any:
        return self.runtime.endpoint

    def counters(self) -> dict[str, float]:
        """The scheduler's monotonic counters (``/get_server_info``; also accepts the flat
        layout of ``EngineBackend.get_server_info()``)."""
        info = self.endpoint.get_server_info()
        sched = info.get("scheduler", info)
        found = {**sched, **(sched.get("prefix_cache") or {})}
        return {k: float(found[k]) for k in COUNTERS if isinstance(found.get(k), int | float)}


def launch(name: str, model_dir: Path, args: argparse.Namespace) -> Server:
    import radixlm_lang as sgl

    log = CACHE_ROOT / f"programs_server_{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        runtime = sgl.Runtime(
            model_path=str(model_dir),
            dtype=args.dtype,
            disable_radix_cache=name == "off",
            num_threads=args.threads,
            max_total_tokens=args.max_total_tokens,
            cpu_kernels=args.cpu_kernels,
            log_level="warning",
            log_file=str(log),
            launch_timeout=600,
        )
    except Exception as e:
        raise SystemExit(f"error: the cache-{name} server did not start ({e}); see {log}") from e
    return Server(name, runtime, log)


def openai_backend(server: Server) -> Any:
    """``radixlm_lang.OpenAI`` (completion model) on the server's ``/v1``; no SDK retries, so
    a failed request shows up as an error instead of as time."""
    import radixlm_lang as sgl

    model = server.endpoint.get_server_info()["served_model_name"]
    url = server.runtime.url + "/v1"
    return sgl.OpenAI(model, base_url=url, api_key="none", is_chat_model=False, max_retries=0)


# ---- one timed run --------------------------------------------------------------------------
def flush(server: Server) -> None:
    for _ in range(50):  # a warm-up's last request may still be finishing
        try:
            server.endpoint.flush_cache()
            return
        except RuntimeError:
            time.sleep(0.1)
    raise RuntimeError(f"the {server.name} server refused to flush its cache")


def time_run(w: Workload, server: Server, backend: Any, threads: int) -> dict[str, Any]:
    """Warm up with one program, flush, then time ``run_batch`` over all of ``w``'s arguments
    (greedy: the DSL's default temperature is 1)."""
    kwargs = {"temperature": 0, **w.run_kwargs}
    flush(server)
    w.function.run_batch(w.arguments[:1], backend=backend, num_threads=1, **kwargs)
    flush(server)
    before = server.counters()
    t0 = time.perf_counter()
    states = w.function.run_batch(w.arguments, backend=backend, num_threads=threads, **kwargs)
    for s in states:
        s.sync()
    wall = time.perf_counter() - t0
    after = server.counters()
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    errors = [repr(s.error()) for s in states if s.error() is not None]
    n = len(states)
    queried, hit = delta.get("queried_tokens"), delta.get("hit_tokens")
    quality = w.quality(states) if w.quality is not None else None
    return {
        "wall_s": wall,
        "programs": n,
        "programs_s": n / wall,
        "hit_rate": None if not queried else hit / queried,
        "prompt_tokens_per_program": None if queried is None else queried / n,
        "prefill_tokens_per_program": _per(delta, "prefill_computed_tokens", n),
        "generated_tokens_per_program": _per(delta, "generated_tokens", n),
        "requests_per_program": _per(delta, "num_finished_requests", n),
        "server": delta,
        "quality": None if quality is None else {"metric": quality[0], "value": quality[1]},
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "texts": [s.text() for s in states],  # main() pops these
    }


def _per(delta: dict[str, float], key: str, n: int) -> float | None:
    return None if key not in delta else delta[key] / n


# ---- reporting ------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def print_table(results: dict[str, dict[str, dict[str, Any]]]) -> None:
    head = (
        f"{'program':<16} {'system':<20} {'progs':>5} {'wall s':>7} {'progs/s':>8} "
        f"{'x off':>6} {'hit rate':>8} {'prompt/prog':>11} {'prefill/prog':>12} "
        f"{'reqs/prog':>9} {'quality':>18} {'= off':>7} {'errors':>6}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for program, runs in results.items():
        for system, r in runs.items():
            off = runs.get("off")
            ratio = None if off is None else r["programs_s"] / off["programs_s"]
            q = r["quality"]
            quality = "" if q is None else f"{q['metric']} {q['value']:.0%}"
            same = r.get("same_as_off")
            same_s = "" if same is None else f"{same}/{r['programs']}"
            print(
                f"{program:<16} {SYSTEMS[system]:<20} {r['programs']:>5} {r['wall_s']:>7.2f} "
                f"{r['programs_s']:>8.3f} {_fmt(ratio, '.2f', 'x'):>6} "
                f"{_fmt(r['hit_rate'], '.1%'):>8} "
                f"{_fmt(r['prompt_tokens_per_program'], '.0f'):>11} "
                f"{_fmt(r['prefill_tokens_per_program'], '.0f'):>12} "
                f"{_fmt(r['requests_per_program'], '.1f'):>9} {quality:>18} "
                f"{same_s:>7} {r['errors']:>6}"
            )
    print(
        "(x off: programs/s over the cache-off server's; hit rate: prefix-cache hit / queried "
        "prompt tokens over the run; prompt/prog, prefill/prog: prompt tokens queried and "
        "prefill tokens computed per program; reqs/prog: server requests per program; = off: "
        "programs whose final text equals the cache-off run's. Random weights: accuracy is "
        "chance-level and means nothing about the model.)"
    )


# ---- main -----------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--programs", default=",".join(PROGRAMS), help="comma-separated")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    p.add_argument("--num-programs", type=int, default=16, help="runs of each program")
    p.add_argument(
        "--num-threads", type=int, default=16, help="run_batch threads (concurrent programs)"
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads of each server")
    p.add_argument(
        "--cpu-kernels",
        default="auto",
        choices=("auto", "torch"),
        help="the servers' CPU kernels: native csrc/ kernels where they build, or the torch path",
    )
    p.add_argument("--repeats", type=int, default=1, help="rounds; the median is reported")
    p.add_argument(
        "--model", default=None, help="checkpoint dir; default: the 120M random Llama (built)"
    )
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="for the default model")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--max-total-tokens", type=int, default=40000, help="KV pool per server")
    p.add_argument("--max-prompt-len", type=int, default=1536, help="longer prompts skipped")
    p.add_argument("--mmlu-dir", default="../shared/data/mmlu", help="with dev/ and test/")
    p.add_argument("--mmlu-shots", type=int, default=5)
    p.add_argument("--mmlu-subjects", type=int, default=2, help="questions spread over these")
    p.add_argument("--hellaswag", default="../shared/data/hellaswag/hellaswag_val_full.txt.bz2")
    p.add_argument("--hellaswag-shots", type=int, default=5)
    p.add_argument("--gsm8k", default="../shared/data/gsm8k/test.jsonl", help="ToT seeds")
    p.add_argument("--tot-question-tokens", type=int, default=32)
    p.add_argument("--tot-plan-tokens", type=int, default=16)
    p.add_argument("--tot-work-tokens", type=int, default=32)
    p.add_argument("--mt-bench", default="../shared/data/mt_bench/question.jsonl")
    p.add_argument("--chat-turns", type=int, default=4)
    p.add_argument("--chat-answer-tokens", type=int, default=32)
    p.add_argument("--sharegpt", default=DEFAULT_SHAREGPT, help="JSON extraction messages")
    p.add_argument("--json-doc-tokens", type=int, default=128)
    p.add_argument("--json-max-tokens", type=int, default=96)
    p.add_argument("--json-out", default=None, help="write every number here as JSON")
    p.add_argument("--plot-file", default=None, help=PLOT_HELP)
    args = p.parse_args()
    check_args(p, args, {"programs": tuple(PROGRAMS), "systems": tuple(SYSTEMS)}, POSITIVE)
    for name in ("mmlu_dir", "hellaswag", "gsm8k", "mt_bench", "sharegpt", "tokenizer"):
        setattr(args, name, str(repo_path(getattr(args, name))))
    return args


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    return {**ordered[len(ordered) // 2], "walls_s": [r["wall_s"] for r in runs]}


def main() -> None:
    args = parse_args()
    env = environment(args.threads)
    print_header(env, args.threads)
    from transformers import AutoTokenizer

    if args.model:
        model_dir = repo_path(args.model)
        tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        meta: dict[str, Any] = {}
    else:
        model_dir = ensure_model(ModelShape(), Path(args.tokenizer), None)
        tok = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
        meta = json.loads((model_dir / "bench_model.json").read_text())
    params = f"{meta['num_params'] / 1e6:.1f}M params, " if meta else ""
    print(
        f"model {model_dir} ({params}{args.dtype}); KV pool {args.max_total_tokens} tokens per "
        f"server; {args.num_programs} programs each, {args.num_threads} concurrent"
    )
    workloads = [PROGRAMS[name].load(args, tok) for name in args.programs]
    for w in workloads:
        print(f"  {w.name:<16} {w.description}")

    servers: dict[str, Server] = {}
    t0 = time.perf_counter()
    try:
        for name in ("on", "off"):
            if name in args.systems or (name == "on" and "openai" in args.systems):
                servers[name] = launch(name, model_dir, args)
        print(f"servers up in {time.perf_counter() - t0:.1f} s", flush=True)
        backends = {name: s.endpoint for name, s in servers.items()}
        if "openai" in args.systems:
            backends["openai"] = openai_backend(servers["on"])
        rounds: dict[str, dict[str, list[dict[str, Any]]]] = {w.name: {} for w in workloads}
        for w in workloads:
            systems = [s for s in args.systems if s != "openai" or w.openai_ok]
            for k in range(args.repeats):
                for system in systems:
                    server = servers["on" if system == "openai" else system]
                    r = time_run(w, server, backends[system], args.num_threads)
                    rounds[w.name].setdefault(system, []).append(r)
                    print(
                        f"[{w.name} / {SYSTEMS[system]}] round {k + 1}: {r['wall_s']:.1f} s, "
                        f"{r['programs_s']:.3f} programs/s, hit rate "
                        f"{_fmt(r['hit_rate'], '.1%')}, {r['errors']} errors",
                        flush=True,
                    )
                    if r["first_error"]:
                        print(f"  first error: {r['first_error']}", flush=True)
    finally:
        for s in servers.values():
            s.runtime.shutdown()

    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name, by_system in rounds.items():
        results[name] = {s: median_run(runs) for s, runs in by_system.items()}
        texts = {s: r.pop("texts") for s, r in results[name].items()}
        for runs in by_system.values():
            for r in runs:
                r.pop("texts", None)
        if "off" in texts:
            for s, r in results[name].items():
                r["same_as_off"] = sum(a == b for a, b in zip(texts[s], texts["off"]))
    print_table(results)

    report = {
        "environment": env,
        "args": vars(args),
        "model": {"dir": str(model_dir), **meta},
        "programs": {w.name: w.description for w in workloads},
        "results": results,
    }
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    write_plot("programs", report, plot_path(args.plot_file, args.json_out))
    if any(r["errors"] for runs in results.values() for r in runs.values()):
        sys.exit("error: some programs failed (see 'errors' above)")


if __name__ == "__main__":
    main()
