"""Offline throughput and peak memory: ``radixlm.Engine`` vs transformers ``generate`` on CPU.

What it measures, per dtype (default float32 and bfloat16), on one random-weight Llama of
realistic shape (hidden 768, 12 layers, 12 heads / 4 KV heads, FFN 2048, GPT-2 vocab 50257,
tied embeddings, ~114M params; built once with a fixed seed and cached in ``bench/.cache/``):

* the first ``--num-prompts`` ShareGPT prompts (first human turn), GPT-2-tokenized and
  truncated to ``--max-prompt-len`` tokens, each generating exactly ``--output-len`` tokens
  greedily with EOS ignored;
* RadixLM: one ``Engine.generate(input_ids=all_prompts)`` call, timed after a tiny warm-up call;
* transformers: ``generate`` over static batches of ``--hf-batch-size`` prompts in input order,
  left-padded with attention masks, timed over all batches (after a tiny warm-up call);
* output tok/s of each and the ratio RadixLM / transformers, how many greedy outputs agree;
* peak RSS of each system, each (system, dtype) run in its own fresh ``spawn`` subprocess, next
  to RadixLM's static memory (weights + KV pool).

Default command (run from the repo root; takes a long time on a 2-core machine):

    python bench/offline_throughput.py

Targets: RadixLM output tok/s >= 2x transformers at equal dtype; RadixLM peak RSS
<= 1.5 x (weights + KV pool). With ``--json-out``, a plot beside it (``--plot-file``): output tok/s
and peak RSS per dtype and system (``bench/plots.py``).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    DEFAULT_SHAREGPT,
    DEFAULT_TOKENIZER,
    MB,
    ModelShape,
    agreement,
    ensure_model,
    environment,
    hf_greedy,
    in_subprocess,
    load_prompts,
    print_header,
    repo_path,
    worker_setup,
)
from plots import PLOT_HELP, plot_path, write_plot

DEFAULT_DATASET = DEFAULT_SHAREGPT
SPEED_TARGET = 2.0  # RadixLM tok/s / transformers tok/s, at equal dtype
RSS_TARGET = 1.5  # RadixLM peak RSS / (weights + KV pool)


# ---- workers (each runs in a fresh subprocess) ----------------------------------------------
def _peak_rss_mb() -> float:
    """Peak RSS of this process so far.

    NOTE: on Linux ``getrusage(RUSAGE_SELF).ru_maxrss`` survives fork + exec, so a spawned
    worker would report the parent's peak if that were higher; ``VmHWM`` in
    ``/proc/self/status`` belongs to the current address space only, so it is read first.
    """
    try:
        with open("/proc/self/status") as f:
            kib = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))
        return kib * 1024 / MB
    except (OSError, StopIteration):
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: KiB on Linux, B on macOS
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MB


def _reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux: ``5`` → ``/proc/self/clear_refs`` resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_fields(after_imports: float, load_peak: float, reset: bool) -> dict[str, Any]:
    """Peak RSS overall and split into the load phase and the run phase (warm-up + timed)."""
    end_peak = _peak_rss_mb()
    return {
        "rss_after_imports_mb": after_imports,
        "peak_rss_load_mb": load_peak,
        "peak_rss_run_mb": end_peak if reset else None,
        "peak_rss_mb": max(load_peak, end_peak),
    }


def run_radixlm(
    model_dir: str, dtype: str, prompts: list[list[int]], output_len: int, threads: int, log: str
) -> dict[str, Any]:
    worker_setup(threads, log)
    import radixlm

    rss_after_imports = _peak_rss_mb()
    # The pool holds the whole workload at once, plus room for the warm-up request.
    total = sum(len(p) + output_len for p in prompts) + 256
    t0 = time.perf_counter()
    engine = radixlm.Engine(model_dir, dtype=dtype, max_total_tokens=total, num_threads=threads)
    load_s = time.perf_counter() - t0
    load_peak, reset = _peak_rss_mb(), _reset_peak_rss()
    greedy = {"temperature": 0, "ignore_eos": True}
    engine.generate(input_ids=prompts[0][:8], sampling_params={**greedy, "max_new_tokens": 2})
    engine.flush_cache()  # the timed run starts from an empty prefix cache

    t0 = time.perf_counter()
    results = engine.generate(
        input_ids=prompts, sampling_params={**greedy, "max_new_tokens": output_len}
    )
    wall = time.perf_counter() - t0

    lim = engine.runner.limits
    static_bytes = lim.weight_bytes + lim.max_total_tokens * lim.kv_bytes_per_token
    info = engine.get_server_info()
    return {
        "wall_s": wall,
        "load_s": load_s,
        "output_ids": [r["output_ids"] for r in results],
        **_rss_fields(rss_after_imports, load_peak, reset),
        "weight_mb": lim.weight_bytes / MB,
        "kv_pool_mb": lim.max_total_tokens * lim.kv_bytes_per_token / MB,
        "static_mb": static_bytes / MB,
        "max_total_tokens": lim.max_total_tokens,
        "kv_bytes_per_token": lim.kv_bytes_per_token,
        "engine_options": {
            k: info[k]
            for k in (
                "max_running_requests",
                "max_prefill_tokens",
                "chunked_prefill_size",
                "schedule_policy",
                "attention_backend",
            )
        },
    }


def run_hf(
    model_dir: str,
    dtype: str,
    prompts: list[list[int]],
    output_len: int,
    threads: int,
    log: str,
    batch_size: int,
) -> dict[str, Any]:
    worker_setup(threads, log)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    rss_after_imports = _peak_rss_mb()
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, dtype)
    ).eval()
    load_s = time.perf_counter() - t0
    load_peak, reset = _peak_rss_mb(), _reset_peak_rss()

    with torch.inference_mode():
        hf_greedy(model, [prompts[0][:8]], 2)
        t0 = time.perf_counter()
        outputs = []
        for s in range(0, len(prompts), batch_size):
            outputs += hf_greedy(model, prompts[s : s + batch_size], output_len)
        wall = time.perf_counter() - t0

    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "wall_s": wall,
        "load_s": load_s,
        "output_ids": outputs,
        **_rss_fields(rss_after_imports, load_peak, reset),
        "weight_mb": weight_bytes / MB,
        "attn_implementation": model.config._attn_implementation,
    }


# ---- reporting ------------------------------------------------------------------------------
def finish(result: dict[str, Any], system: str, dtype: str, num_prompts: int, output_len: int):
    """Add derived numbers; ``tokens_ok``: every prompt got exactly ``output_len`` tokens."""
    outputs = result["output_ids"]
    tokens = sum(len(o) for o in outputs)
    result.update(
        system=system,
        dtype=dtype,
        output_tokens=tokens,
        output_tok_s=tokens / result["wall_s"],
        tokens_ok=len(outputs) == num_prompts and all(len(o) == output_len for o in outputs),
    )
    if "static_mb" in result:
        result["rss_ratio"] = result["peak_rss_mb"] / result["static_mb"]
    return result


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def print_dtype(dtype: str, ours: dict, hf: dict, match: dict, prompt_tokens: int) -> None:
    print(f"\n=== {dtype} === ({prompt_tokens} prompt tokens in total)")
    for name, r in (("radixlm", ours), ("transformers", hf)):
        ok = "" if r["tokens_ok"] else "  <-- WRONG token count"
        print(
            f"  {name:<13} {r['output_tokens']:>6} output tokens in {r['wall_s']:8.2f} s = "
            f"{r['output_tok_s']:8.1f} tok/s   peak RSS {r['peak_rss_mb']:5.0f} MB "
            f"(imports {r['rss_after_imports_mb']:.0f}, load {r['peak_rss_load_mb']:.0f}, "
            f"run {_mb(r['peak_rss_run_mb'])}){ok}"
        )
    print(
        f"  radixlm static: weights {ours['weight_mb']:.0f} MB + KV pool {ours['kv_pool_mb']:.0f} MB "
        f"({ours['max_total_tokens']} tokens) = {ours['static_mb']:.0f} MB; "
        f"peak RSS / static = {ours['rss_ratio']:.2f} (target <= {RSS_TARGET})"
    )
    speedup = ours["output_tok_s"] / hf["output_tok_s"]
    print(f"  speedup radixlm / transformers = {speedup:.2f}x (target >= {SPEED_TARGET}x)")
    note = " (bf16 rounding differs between the two; mismatches are expected)"
    print(
        f"  greedy outputs equal to transformers: {match['equal']}/{match['total']}, "
        f"mean common prefix {match['mean_common_prefix']:.1f} tokens"
        + (note if dtype != "float32" else "")
    )


def print_summary(rows: list[dict]) -> None:
    head = (
        f"{'dtype':<9} {'ours tok/s':>10} {'HF tok/s':>9} {'speedup':>8} {'ours RSS':>9} "
        f"{'HF RSS':>8} {'static':>7} {'RSS/static':>10} {'equal':>7}"
    )
    print("\nSummary (RSS and static = weights + KV pool, in MB)")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['dtype']:<9} {r['radixlm_tok_s']:>10.1f} {r['hf_tok_s']:>9.1f} "
            f"{r['speedup']:>7.2f}x {r['radixlm_peak_rss_mb']:>9.0f} {r['hf_peak_rss_mb']:>8.0f} "
            f"{r['radixlm_static_mb']:>7.0f} {r['rss_ratio']:>10.2f} {r['equal_outputs']:>7}"
        )
    speed_ok = all(r["speedup"] >= SPEED_TARGET for r in rows)
    rss_ok = all(r["rss_ratio"] <= RSS_TARGET for r in rows)
    print(
        f"targets: speedup >= {SPEED_TARGET}x: {'met' if speed_ok else 'NOT met'}; "
        f"peak RSS <= {RSS_TARGET} x static: {'met' if rss_ok else 'NOT met'}"
    )


# ---- main -----------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--output-len", type=int, default=64, help="new tokens per prompt")
    p.add_argument("--max-prompt-len", type=int, default=1024, help="prompts are truncated to this")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated")
    p.add_argument("--hf-batch-size", type=int, default=8, help="static batch size for HF")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads for both systems")
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="relative to the repo root")
    p.add_argument("--dataset", default=DEFAULT_DATASET, help="relative to the repo root")
    p.add_argument(
        "--model-dir", default=None, help="default: bench/.cache/<shape key>; built if missing"
    )
    p.add_argument("--json-out", default=None, help="write every number here as JSON")
    p.add_argument("--plot-file", default=None, help=PLOT_HELP)
    p.add_argument("--log-level", default="warning", help="logging level inside the workers")
    args = p.parse_args()
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in args.dtypes if d not in ("float32", "bfloat16", "float16")]
    if bad or not args.dtypes:
        p.error(f"--dtypes: unknown {bad}; choose from float32, bfloat16, float16")
    for name in ("num_prompts", "output_len", "max_prompt_len", "hf_batch_size", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_prompt_len + args.output_len > ModelShape().max_positions:
        p.error(f"--max-prompt-len + --output-len must be <= {ModelShape().max_positions}")
    return args


def main() -> None:
    args = parse_args()
    env = environment(args.threads)
    print_header(env, args.threads)
    tokenizer_dir, dataset = repo_path(args.tokenizer), repo_path(args.dataset)
    model_dir = ensure_model(
        ModelShape(), tokenizer_dir, repo_path(args.model_dir) if args.model_dir else None
    )
    prompts = load_prompts(dataset, tokenizer_dir, args.num_prompts, args.max_prompt_len)
    prompt_tokens = sum(len(p) for p in prompts)
    expected = (args.num_prompts, args.output_len)
    meta = json.loads((model_dir / "bench_model.json").read_text())
    print(
        f"model {model_dir} ({meta['num_params'] / 1e6:.1f}M params); {len(prompts)} prompts, "
        f"{prompt_tokens} prompt tokens (max {max(map(len, prompts))}), {args.output_len} "
        f"output tokens each; {args.threads} threads",
        flush=True,
    )

    runs, rows = [], []
    for dtype in args.dtypes:
        # Same weights, prompts and settings for both systems; only the runner differs.
        work = (str(model_dir), dtype, prompts, args.output_len, args.threads, args.log_level)
        print(f"[{dtype}] radixlm ...", flush=True)
        ours = finish(in_subprocess(run_radixlm, *work), "radixlm", dtype, *expected)
        print(f"[{dtype}] transformers ...", flush=True)
        hf = in_subprocess(run_hf, *work, args.hf_batch_size)
        hf = finish(hf, "transformers", dtype, *expected)
        match = agreement(ours["output_ids"], hf["output_ids"])
        print_dtype(dtype, ours, hf, match, prompt_tokens)
        rows.append(
            {
                "dtype": dtype,
                "radixlm_tok_s": ours["output_tok_s"],
                "hf_tok_s": hf["output_tok_s"],
                "speedup": ours["output_tok_s"] / hf["output_tok_s"],
                "radixlm_peak_rss_mb": ours["peak_rss_mb"],
                "hf_peak_rss_mb": hf["peak_rss_mb"],
                "radixlm_static_mb": ours["static_mb"],
                "rss_ratio": ours["rss_ratio"],
                "equal_outputs": f"{match['equal']}/{match['total']}",
            }
        )
        for r in (ours, hf):
            r.pop("output_ids")
        runs.append({"dtype": dtype, "radixlm": ours, "transformers": hf, "agreement": match})
    print_summary(rows)

    report = {
        "environment": env,
        "args": vars(args),
        "model": {"dir": str(model_dir), **meta},
        "workload": {
            "num_prompts": len(prompts),
            "prompt_tokens": prompt_tokens,
            "output_tokens_per_system": args.num_prompts * args.output_len,
        },
        "runs": runs,
        "summary": rows,
        "targets": {"speedup_min": SPEED_TARGET, "rss_ratio_max": RSS_TARGET},
    }
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    write_plot("offline_throughput", report, plot_path(args.plot_file, args.json_out))
    if not all(r["tokens_ok"] for run in runs for r in (run["radixlm"], run["transformers"])):
        sys.exit("error: a system did not generate exactly num_prompts x output_len tokens")


if __name__ == "__main__":
    main()
