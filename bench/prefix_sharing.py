"""Prefix-cache benchmark: RadixLM with its radix cache (LPM or FCFS order) vs cache off vs
transformers ``generate``, on CPU, on workloads with much, some and no prompt reuse.

Model: the random-weight Llama of ``offline_throughput.py`` (hidden 768, 12 layers, 12 heads / 4 KV
heads, FFN 2048, GPT-2 vocab, ~114M params, cached in ``bench/.cache/``), ``--dtype`` float32.
Prompts are built from token ids (shared text is tokenized once), so requests that share text
share exactly the same token prefix. All greedy with EOS ignored. Workloads:

* ``mmlu``: 5-shot MMLU, the first ``--mmlu-subjects`` (4) subjects x ``--mmlu-questions`` (20)
  test questions: standard header + the subject's 5 dev examples + the question ending in
  ``Answer:``; ``--mmlu-max-new-tokens`` (1). A subject's prompts share its few-shot prefix.
* ``multiturn``: ``--mt-questions`` (40) MT-bench conversations. Turn 1 = system line + ``USER: q1
  ASSISTANT:``; once every turn-1 answer is back, turn 2 = turn-1 prompt + the system's own
  answer tokens + ``USER: q2 ASSISTANT:``; ``--mt-max-new-tokens`` (32) per turn.
* ``noreuse``: ``--sharegpt-prompts`` (64) unique ShareGPT first turns (<= 512 tokens), 16 new.

Systems, each in its own spawned subprocess: ``lpm`` / ``fcfs`` = ``radixlm.Engine`` with the radix
cache and that ``schedule_policy``, ``off`` = ``disable_radix_cache=True``, ``hf`` = transformers
``generate`` in static left-padded batches of ``--hf-batch-size`` (8). RadixLM gets each workload
(each turn) as one ``generate`` batch, after a warm-up request and ``flush_cache()``; its KV pool
(same for all three) holds the largest workload without sharing. ``--repeats`` rounds (default
3) run every RadixLM system once per round, each in a fresh process and interleaved, so slow
drifts of a shared machine hit all systems alike; the median round per workload is reported. Reported per workload and system:
requests/s, prefill tokens computed (prompt - cached tokens, from ``meta_info``), hit rate
(cached / prompt tokens), tree-op % (``get_server_info()["prefix_cache"]["op_seconds"]`` delta /
wall time, when reported), retractions, greedy-output agreement with ``off`` and ``hf``.

Default command (run from the repo root; takes a long time on a 2-core machine):

    python bench/prefix_sharing.py --json-out bench/results/prefix_sharing_<date>.json

Targets: mmlu lpm >= 5x cache-off and >= 10x transformers requests/s; noreuse lpm / cache-off
>= 0.98; radix tree operations < 1% of every cache-on timed run; lpm outputs token-identical to
cache-off (a mismatch, or a wrong output length, makes the script exit non-zero).

With ``--json-out``, a plot beside it (``--plot-file``; ``bench/plots.py``): requests/s per
workload and system (every round a dot) and the prefix-cache hit rate against the best possible.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    DEFAULT_SHAREGPT,
    DEFAULT_TOKENIZER,
    ModelShape,
    agreement,
    check_args,
    ensure_model,
    environment,
    hf_greedy,
    in_subprocess,
    load_prompts,
    print_header,
    progress,
    repo_path,
    worker_setup,
)
from plots import PLOT_HELP, plot_path, write_plot

DEFAULT_MMLU = "../shared/data/mmlu"
DEFAULT_MT_BENCH = "../shared/data/mt_bench/question.jsonl"
WORKLOADS = ("mmlu", "multiturn", "noreuse")
SYSTEMS = {"lpm": "radixlm lpm", "fcfs": "radixlm fcfs", "off": "radixlm cache off", "hf": "HF"}
NOREUSE_MAX_LEN = 512
NOREUSE_NEW_TOKENS = 16
MMLU_SHOTS = 5
CHAT_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
# Targets (requests/s ratios; tree-op share of the timed run).
MMLU_VS_OFF, MMLU_VS_HF, NOREUSE_VS_OFF, TREE_OP_MAX_PCT = 5.0, 10.0, 0.98, 1.0
MET = {True: "met", False: "NOT met"}
# Engine counters that grow monotonically; reported as deltas over the timed section.
COUNTERS = (
    "queried_tokens hit_tokens evicted_tokens op_seconds num_retractions prefill_computed_tokens"
).split()
OPTIONS = "schedule_policy disable_radix_cache max_total_num_tokens chunked_prefill_size".split()
POSITIVE = (
    "mmlu_subjects mmlu_questions mmlu_max_prompt_len mt_questions mt_max_new_tokens "
    "sharegpt_prompts hf_batch_size threads repeats hf_repeats"
).split()


@dataclass(frozen=True)
class Workload:
    name: str
    prompts: list[list[int]]  # the first (or only) turn of every request
    max_new_tokens: int
    followups: list[list[int]] | None = None  # multiturn: turn-2 ids appended after the answer

    @property
    def num_requests(self) -> int:
        return len(self.prompts) * (2 if self.followups else 1)

    def lengths(self) -> list[int]:
        """Tokens (prompt + output) of each request's last turn: its whole KV footprint."""
        followups = self.followups or [[] for _ in self.prompts]
        turns = 2 if self.followups else 1
        return [
            len(p) + len(f) + turns * self.max_new_tokens for p, f in zip(self.prompts, followups)
        ]


# ---- workloads (parent process) -------------------------------------------------------------
def _mmlu_example(row: dict[str, str], with_answer: bool) -> str:
    text = row["question"] + "".join(f"\n{c}. {row[f'choice{i}']}" for i, c in enumerate("ABCD"))
    return text + "\nAnswer:" + (f" {'ABCD'[int(row['answer'])]}\n\n" if with_answer else "")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_mmlu(root: Path, tok: Any, args: argparse.Namespace) -> tuple[Workload, list[str]]:
    """``--mmlu-subjects`` x ``--mmlu-questions`` 5-shot prompts, subjects in alphabetical order;
    a subject without enough questions that fit ``--mmlu-max-prompt-len`` is skipped."""
    prompts, used = [], []
    for test_csv in sorted((root / "test").glob("*_test.csv")):
        subject = test_csv.name.removesuffix("_test.csv")
        shots = _read_csv(root / "dev" / f"{subject}_dev.csv")[:MMLU_SHOTS]
        header = "The following are multiple choice questions (with answers) about "
        prefix = header + subject.replace("_", " ") + ".\n\n"
        prefix_ids = tok.encode(prefix + "".join(_mmlu_example(r, True) for r in shots))
        questions = []
        for row in _read_csv(test_csv):
            ids = prefix_ids + tok.encode(_mmlu_example(row, False))
            if len(ids) <= args.mmlu_max_prompt_len:
                questions.append(ids)
            if len(questions) == args.mmlu_questions:
                prompts += questions
                used.append(subject)
                break
        if len(used) == args.mmlu_subjects:
            return Workload("mmlu", prompts, args.mmlu_max_new_tokens), used
    sys.exit(f"error: only {len(used)} MMLU subjects fit --mmlu-questions/--mmlu-max-prompt-len")


def load_multiturn(path: Path, tok: Any, n: int, max_new: int) -> Workload:
    with open(path) as f:
        convs = [json.loads(line) for line in f if line.strip()]
    convs = [c for c in convs if len(c["turns"]) >= 2][:n]
    if len(convs) < n:
        sys.exit(f"error: {path} has {len(convs)} two-turn conversations, --mt-questions is {n}")
    first = [tok.encode(f"{CHAT_SYSTEM}\n\nUSER: {c['turns'][0]}\nASSISTANT:") for c in convs]
    second = [tok.encode(f"\nUSER: {c['turns'][1]}\nASSISTANT:") for c in convs]
    return Workload("multiturn", first, max_new, second)


def trie_tokens(prompts: list[list[int]]) -> int:
    """Distinct tokens of a prefix trie over ``prompts``: the least prefill any cache can do."""
    root: dict[int, dict] = {}
    count = 0
    for p in prompts:
        node = root
        for t in p:
            if t not in node:
                node[t] = {}
                count += 1
            node = node[t]
    return count


# ---- workers (each runs in a fresh subprocess) ----------------------------------------------
# ``gen(prompts, max_new_tokens)`` returns one {"output_ids", "prompt_tokens", "cached_tokens"}
# per prompt; ``run_workloads`` times each workload through it.
Gen = Callable[[list[list[int]], int], list[dict[str, Any]]]


def run_workloads(
    gen: Gen,
    workloads: list[Workload],
    prepare: Callable[[Workload], None],
    counters: Callable[[], dict[str, float]],
    repeats: int = 1,
) -> dict[str, Any]:
    """Time every workload ``repeats`` times (each from an empty cache); keep the median run
    (by wall time) and record every run's wall time under ``walls_s``."""
    results = {}
    bar = progress(len(workloads) * repeats, "workload runs")
    for w in workloads:
        runs = []
        for _ in range(repeats):
            runs.append(_time_workload(gen, w, prepare, counters))
            bar.update(1)
        runs.sort(key=lambda r: r["wall_s"])
        results[w.name] = {**runs[len(runs) // 2], "walls_s": [r["wall_s"] for r in runs]}
    bar.close()
    return results


def _time_workload(
    gen: Gen,
    w: Workload,
    prepare: Callable[[Workload], None],
    counters: Callable[[], dict[str, float]],
) -> dict[str, Any]:
    """One timed run of ``w`` from an empty cache."""
    prepare(w)
    before = counters()
    t0 = time.perf_counter()
    outs = gen(w.prompts, w.max_new_tokens)
    turn1_s = time.perf_counter() - t0
    if w.followups:  # turn 2 continues each conversation with this system's own answer
        turn2 = [p + o["output_ids"] + f for p, o, f in zip(w.prompts, outs, w.followups)]
        outs = outs + gen(turn2, w.max_new_tokens)
    wall = time.perf_counter() - t0
    after = counters()
    prompt = sum(o["prompt_tokens"] for o in outs)
    cached = sum(o["cached_tokens"] for o in outs)
    op_s = _delta(before, after, "op_seconds")
    engine = {k: _delta(before, after, k) for k in COUNTERS}
    engine["tree_tokens"] = after.get("tree_tokens")  # a size: its value at the end
    return {
        "wall_s": wall,
        "turn1_s": turn1_s,
        "requests": len(outs),
        "req_s": len(outs) / wall,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "prefill_computed": prompt - cached,
        "hit_rate": cached / max(1, prompt),
        "tree_op_pct": None if op_s is None else 100 * op_s / wall,
        "engine": engine,  # None where the engine does not report a counter
        "tokens_ok": all(len(o["output_ids"]) == w.max_new_tokens for o in outs),
        "output_ids": [o["output_ids"] for o in outs],  # main() pops these
    }


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge a system's rounds: per workload the median round by wall time, plus every wall."""
    merged = dict(rounds[0])
    merged["workloads"] = {}
    for name in rounds[0]["workloads"]:
        runs = sorted((r["workloads"][name] for r in rounds), key=lambda w: w["wall_s"])
        merged["workloads"][name] = {
            **runs[len(runs) // 2],
            "walls_s": [w for r in runs for w in r["walls_s"]],
        }
    return merged


def _delta(before: dict, after: dict, key: str) -> float | None:
    return after[key] - before.get(key, 0) if key in after else None


def run_radixlm(
    model_dir: str,
    dtype: str,
    workloads: list[Workload],
    threads: int,
    log: str,
    repeats: int,
    system: str,
    pool: int,
    cpu_kernels: str,
) -> dict[str, Any]:
    worker_setup(threads, log)
    import radixlm

    t0 = time.perf_counter()
    engine = radixlm.Engine(
        model_dir,
        dtype=dtype,
        schedule_policy="fcfs" if system == "fcfs" else "lpm",
        disable_radix_cache=system == "off",
        max_total_tokens=pool,
        num_threads=threads,
        cpu_kernels=cpu_kernels,
    )
    load_s = time.perf_counter() - t0

    def gen(prompts: list[list[int]], max_new: int) -> list[dict[str, Any]]:
        params = {"max_new_tokens": max_new, "temperature": 0, "ignore_eos": True}
        results = engine.generate(input_ids=prompts, sampling_params=params)
        return [{"output_ids": r["output_ids"], **r["meta_info"]} for r in results]

    def prepare(w: Workload) -> None:
        gen([w.prompts[0][:8]], 2)
        if not engine.flush_cache():
            raise RuntimeError("flush_cache() refused: requests still live")

    def counters() -> dict[str, float]:
        """Engine counters when the engine has them (absent ones are simply left out)."""
        info = engine.get_server_info()
        found = {**info, **(info.get("prefix_cache") or {})}
        return {
            k: found[k]
            for k in COUNTERS + ["tree_tokens"]
            if isinstance(found.get(k), (int, float))
        }

    results = run_workloads(gen, workloads, prepare, counters, repeats)
    info = engine.get_server_info()
    return {
        "load_s": load_s,
        "workloads": results,
        "engine_options": {k: info.get(k) for k in OPTIONS},
    }


def run_hf(
    model_dir: str,
    dtype: str,
    workloads: list[Workload],
    threads: int,
    log: str,
    repeats: int,
    batch_size: int,
) -> dict[str, Any]:
    worker_setup(threads, log)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, dtype)
    ).eval()
    load_s = time.perf_counter() - t0

    def batch(rows: list[list[int]], max_new: int) -> list[dict[str, Any]]:
        outs = hf_greedy(model, rows, max_new)
        return [
            {"output_ids": o, "prompt_tokens": len(p), "cached_tokens": 0}
            for p, o in zip(rows, outs)
        ]

    def gen(prompts: list[list[int]], max_new: int) -> list[dict[str, Any]]:
        return [
            o
            for s in range(0, len(prompts), batch_size)
            for o in batch(prompts[s : s + batch_size], max_new)
        ]

    with torch.inference_mode():
        gen([workloads[0].prompts[0][:8]], 2)  # warm-up
        results = run_workloads(gen, workloads, lambda w: None, dict, repeats)
    return {"load_s": load_s, "workloads": results, "attn": model.config._attn_implementation}


# ---- reporting ------------------------------------------------------------------------------
def _ratio(runs: dict, workload: str, a: str, b: str) -> float | None:
    if a not in runs or b not in runs:
        return None
    return runs[a]["workloads"][workload]["req_s"] / runs[b]["workloads"][workload]["req_s"]


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def print_table(runs: dict, workloads: list[Workload], agree: dict) -> None:
    head = (
        f"{'workload':<10} {'system':<18} {'reqs':>5} {'wall s':>8} {'req/s':>8} {'x off':>6} "
        f"{'x HF':>6} {'prompt tok':>10} {'prefill tok':>11} {'hit rate':>8} {'tree op':>8} "
        f"{'retract':>7} {'= off':>7} {'= HF':>7}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for w in workloads:
        for s, run in runs.items():
            r = run["workloads"][w.name]
            x_off, x_hf = (_fmt(_ratio(runs, w.name, s, ref), ".2f", "x") for ref in ("off", "hf"))
            same = [agree[w.name].get((s, ref)) for ref in ("off", "hf")]
            same_s = " ".join(f"{e['equal']:>3}/{e['total']:<3}" if e else " " * 7 for e in same)
            print(
                f"{w.name:<10} {SYSTEMS[s]:<18} {r['requests']:>5} {r['wall_s']:>8.2f} "
                f"{r['req_s']:>8.3f} {x_off:>6} {x_hf:>6} {r['prompt_tokens']:>10} "
                f"{r['prefill_computed']:>11} {r['hit_rate']:>8.1%} "
                f"{_fmt(r['tree_op_pct'], '.2f', '%'):>8} "
                f"{_fmt(r['engine']['num_retractions'], '.0f'):>7} {same_s}"
            )
    print(
        "(x off / x HF: this system's requests/s over cache-off's / transformers'; prefill tok = "
        "prompt - cached tokens; tree op = radix-tree operation time / wall time)"
    )


def check_targets(runs: dict, names: list[str], agree: dict) -> list[dict[str, Any]]:
    """The targets of the module docstring; ``met`` is None where a system or counter is missing."""
    checks: list[tuple[str, float | None, bool, str]] = []  # (target, value, met, shown)
    goals = [("mmlu", "off", MMLU_VS_OFF), ("mmlu", "hf", MMLU_VS_HF)]
    for name, ref, goal in [*goals, ("noreuse", "off", NOREUSE_VS_OFF)]:
        if name in names:
            v = _ratio(runs, name, "lpm", ref)
            what = f"{name} lpm / {ref} requests/s >= {goal}"
            checks.append((what, v, v is None or v >= goal, _fmt(v, ".3f")))
    pcts = [
        runs[s]["workloads"][n]["tree_op_pct"] for s in ("lpm", "fcfs") if s in runs for n in names
    ]
    worst = None if not pcts or None in pcts else max(pcts)
    what = f"tree ops < {TREE_OP_MAX_PCT}% of every cache-on run (worst)"
    checks.append((what, worst, worst is None or worst < TREE_OP_MAX_PCT, _fmt(worst, ".3f", "%")))
    pairs = [agree[n][("lpm", "off")] for n in names if ("lpm", "off") in agree[n]]
    eq, total = sum(p["equal"] for p in pairs), sum(p["total"] for p in pairs)
    what = "lpm outputs token-identical to cache-off"
    checks.append((what, eq if pairs else None, eq == total, f"{eq}/{total}" if pairs else "n/a"))
    print("\ntargets:")
    for what, v, ok, shown in checks:
        verdict = "n/a (system not run / counter not reported)" if v is None else MET[ok]
        print(f"  {what:<50} {shown:>8}  {verdict}")
    return [
        {"target": what, "value": v, "met": None if v is None else ok} for what, v, ok, _ in checks
    ]


# ---- main -----------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    p.add_argument("--mmlu-subjects", type=int, default=4)
    p.add_argument("--mmlu-questions", type=int, default=20, help="test questions per subject")
    p.add_argument("--mmlu-max-new-tokens", type=int, default=1, choices=(1, 2))
    p.add_argument(
        "--mmlu-max-prompt-len", type=int, default=1536, help="longer questions are skipped"
    )
    p.add_argument("--mt-questions", type=int, default=40, help="two-turn conversations")
    p.add_argument("--mt-max-new-tokens", type=int, default=32, help="new tokens per turn")
    p.add_argument("--sharegpt-prompts", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--hf-batch-size", type=int, default=8, help="static batch size for HF")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads for every system")
    p.add_argument(
        "--cpu-kernels",
        default="auto",
        choices=("auto", "torch"),
        help="RadixLM's CPU kernels: the native csrc/ kernels where they build, or the torch path",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="rounds (every RadixLM system once per round, fresh process; median reported)",
    )
    p.add_argument("--hf-repeats", type=int, default=1, help="rounds for transformers")
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="relative to the repo root")
    p.add_argument("--mmlu-dir", default=DEFAULT_MMLU, help="with dev/ and test/ CSVs")
    p.add_argument("--mt-bench", default=DEFAULT_MT_BENCH, help="MT-bench question.jsonl")
    p.add_argument("--sharegpt", default=DEFAULT_SHAREGPT, help="ShareGPT JSON")
    p.add_argument(
        "--model-dir", default=None, help="default: bench/.cache/<shape key>; built if missing"
    )
    p.add_argument("--json-out", default=None, help="write every number here as JSON")
    p.add_argument("--plot-file", default=None, help=PLOT_HELP)
    p.add_argument("--log-level", default="warning", help="logging level inside the workers")
    args = p.parse_args()
    check_args(p, args, {"workloads": WORKLOADS, "systems": tuple(SYSTEMS)}, POSITIVE)
    return args


def build_workloads(args: argparse.Namespace) -> tuple[list[Workload], dict]:
    from transformers import AutoTokenizer

    tok_dir = repo_path(args.tokenizer)
    tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    workloads, extra = [], {}
    if "mmlu" in args.workloads:
        w, extra["mmlu_subjects"] = load_mmlu(repo_path(args.mmlu_dir), tok, args)
        workloads.append(w)
    if "multiturn" in args.workloads:
        n, new = args.mt_questions, args.mt_max_new_tokens
        workloads.append(load_multiturn(repo_path(args.mt_bench), tok, n, new))
    if "noreuse" in args.workloads:
        n, flag = args.sharegpt_prompts, "--sharegpt-prompts"
        prompts = load_prompts(repo_path(args.sharegpt), tok_dir, n, NOREUSE_MAX_LEN, flag)
        workloads.append(Workload("noreuse", prompts, NOREUSE_NEW_TOKENS))
    limit = ModelShape().max_positions
    for w in workloads:
        if max(w.lengths()) > limit:
            sys.exit(f"error: a {w.name} request needs {max(w.lengths())} tokens > context {limit}")
    return workloads, extra


def main() -> None:
    args = parse_args()
    env = environment(args.threads)
    print_header(env, args.threads)
    model_dir = repo_path(args.model_dir) if args.model_dir else None
    model_dir = ensure_model(ModelShape(), repo_path(args.tokenizer), model_dir)
    meta = json.loads((model_dir / "bench_model.json").read_text())
    workloads, extra = build_workloads(args)
    pool = max(sum(w.lengths()) for w in workloads) + 256  # + room for the warm-up request
    print(
        f"model {model_dir} ({meta['num_params'] / 1e6:.1f}M params, {args.dtype}); "
        f"RadixLM KV pool {pool} tokens"
    )
    shape = {}
    for w in workloads:
        total, unique = sum(map(len, w.prompts)), trie_tokens(w.prompts)
        shape[w.name] = dict(
            requests=w.num_requests,
            new_tokens=w.max_new_tokens,
            turn1_prompt_tokens=total,
            turn1_trie_tokens=unique,
        )
        print(
            f"  {w.name:<10} {w.num_requests:>4} requests, {w.max_new_tokens} new tokens each; "
            f"first turn: {total} prompt tokens, {unique} distinct in a prefix trie "
            f"(best possible hit rate {1 - unique / max(1, total):.1%}; prefill token-count "
            f"bound on any cache's speedup: {total / max(1, unique):.2f}x)"
        )
    if extra.get("mmlu_subjects"):
        print(f"  mmlu subjects: {', '.join(extra['mmlu_subjects'])}")

    # Rounds: every system once per round, each in a fresh process, so slow drifts of a shared
    # machine hit all systems alike; per workload the median round is reported.
    rounds: dict[str, list[dict]] = {s: [] for s in args.systems}
    outputs: dict[str, dict[str, list[list[int]]]] = {}  # system -> workload -> greedy outputs
    for k in range(max(args.repeats, args.hf_repeats if "hf" in args.systems else 0)):
        for s in args.systems:
            if k >= (args.hf_repeats if s == "hf" else args.repeats):
                continue
            print(f"[{SYSTEMS[s]}] round {k + 1} ...", flush=True)
            t0 = time.perf_counter()
            work = (str(model_dir), args.dtype, workloads, args.threads, args.log_level, 1)
            extra_args = (args.hf_batch_size,) if s == "hf" else (s, pool, args.cpu_kernels)
            run = in_subprocess(run_hf if s == "hf" else run_radixlm, *work, *extra_args)
            outs = {n: r.pop("output_ids") for n, r in run["workloads"].items()}
            if s in outputs and outs != outputs[s]:
                sys.exit(f"error: {SYSTEMS[s]} produced different greedy outputs across rounds")
            outputs[s] = outs
            rounds[s].append(run)
            print(f"[{SYSTEMS[s]}] done in {time.perf_counter() - t0:.1f} s", flush=True)
    runs = {s: median_round(r) for s, r in rounds.items()}

    # Greedy-output agreement: every system vs cache-off and vs transformers, per workload.
    agree: dict[str, dict] = {}
    for w in workloads:
        out = {s: outs[w.name] for s, outs in outputs.items()}
        pairs = [(s, ref) for ref in ("off", "hf") if ref in out for s in out if s != ref]
        agree[w.name] = {(s, ref): agreement(out[s], out[ref]) for s, ref in pairs}
    print_table(runs, workloads, agree)
    checks = check_targets(runs, [w.name for w in workloads], agree)

    results = [(f"{s}/{n}", r) for s, run in runs.items() for n, r in run["workloads"].items()]
    bad_len = [name for name, r in results if not r["tokens_ok"]]
    report = {
        "environment": env,
        "args": vars(args),
        "model": {"dir": str(model_dir), **meta},
        "kv_pool_tokens": pool,
        "workloads": shape,
        "mmlu_subjects": extra.get("mmlu_subjects"),
        "runs": runs,
        "agreement": {
            n: {f"{s}_vs_{ref}": v for (s, ref), v in a.items()} for n, a in agree.items()
        },
        "targets": checks,
    }
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    write_plot("prefix_sharing", report, plot_path(args.plot_file, args.json_out))
    if bad_len:
        sys.exit(f"error: wrong number of output tokens in {', '.join(bad_len)}")
    if checks[-1]["met"] is False:
        sys.exit("error: lpm greedy outputs differ from cache-off")


if __name__ == "__main__":
    main()
