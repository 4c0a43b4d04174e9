"""GPU benchmark: a Llama-3-8B-shaped model with random bf16 weights drawn on the device.

Model: hidden 4096, 32 layers, 32 heads / 8 KV heads, FFN 14336, vocab 128256, rope theta 5e5
(``--shape llama3-8b``); only a ``config.json`` is written (``bench/.cache/``), the engine runs
with ``load_format="dummy"`` and ``skip_tokenizer_init`` (prompts are token ids made with the
GPT-2 tokenizer from ShareGPT text; every id is < 50257, inside the model's vocabulary). All
requests ignore EOS, so every run generates exactly the requested tokens. Phases, each engine in
its own spawned process (``--phases``, default all):

* ``batch1``: one request, ``--batch1-prompt-len`` (128) prompt tokens; decode tok/s =
  ``(N - 1) / (t(N tokens) - t(1 token))`` with ``N = --batch1-output-len`` (256), median of 3,
  and its ratio to the roofline ``--mem-bw-gbs`` (4800 GB/s on an H200) / weight bytes.
* ``throughput``: ``--num-prompts`` (1000) ShareGPT first turns (<= 1024 tokens; the dataset has
  no replies, so every request generates ``--output-len`` (256) tokens), all submitted at once
  (rate = inf) with at most 64, then 256, running (``max_running_requests``): output tok/s and the GPU idle share = 1 - (sum of per-batch device
  time, CUDA events) / wall time. With CUDA graphs and the overlap scheduler the device should
  never wait for the host between decode steps.
* ``overlap``: the concurrency-64 throughput run again with ``--disable-overlap-schedule``;
  ratio overlap on / off.
* ``prefix``: ``--prefix-requests`` (128) requests = one shared ``--prefix-len`` (2048)-token
  prefix + a distinct 64-token question each, 32 output tokens; radix cache on vs off.

Targets (issue 7): batch-1 >= 230 tok/s; >= 5000 output tok/s; prefix on/off >= 3x; overlap
on/off >= 1.1x. ``--shape tiny --device cpu`` runs every phase on a tiny model on the CPU in
seconds (a smoke test of this script, run by the unit tests; its numbers mean nothing).

Default command (on the GPU machine, from the repo root):

    python bench/gpu.py --json-out bench/results/gpu_h200_<date>.json

With ``--json-out``, a plot beside it (``--plot-file``; ``bench/plots.py``): output tok/s against
concurrency (overlap on and off, GPU idle share), batch-1 decode against the roofline, and the
shared-prefix requests/s with the radix cache on and off.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    DEFAULT_SHAREGPT,
    DEFAULT_TOKENIZER,
    REPO_ROOT,
    check_args,
    environment,
    in_subprocess,
    load_prompts,
    repo_path,
)
from plots import PLOT_HELP, plot_path, write_plot

SHAPES = {
    "llama3-8b": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=8192,
    ),
    "tiny": dict(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=256,
        vocab_size=50304,
        rope_theta=10000.0,
        max_position_embeddings=4096,
    ),
}
PHASES = ("batch1", "throughput", "overlap", "prefix")
TARGETS = {"batch1_tok_s": 230.0, "output_tok_s": 5000.0, "prefix_ratio": 3.0, "overlap_ratio": 1.1}


def model_dir(shape: str) -> Path:
    """A checkpoint directory holding only ``config.json`` (weights are drawn at load)."""
    from transformers import LlamaConfig

    path = REPO_ROOT / "bench" / ".cache" / f"dummy-{shape}"
    path.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(**SHAPES[shape], bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16")
    cfg.architectures = ["LlamaForCausalLM"]
    (path / "config.json").write_text(cfg.to_json_string())
    return path


# ---- workers (fresh process each) -------------------------------------------------------------
def _engine(path: str, device: str, **options: Any):
    import radixlm

    opts = dict(model_path=path, device=device, load_format="dummy", skip_tokenizer_init=True)
    if device == "cuda":
        opts["dtype"] = "bfloat16"
    else:  # tiny smoke test
        opts.update(dtype="float32", max_total_tokens=16384)
    return radixlm.Engine(**{**opts, **options})


def _greedy(n: int) -> dict[str, Any]:
    return {"temperature": 0, "ignore_eos": True, "max_new_tokens": n}


def run_batch1(path: str, device: str, prompt: list[int], out_len: int) -> dict[str, Any]:
    engine = _engine(path, device, max_running_requests=1)
    try:
        lim = engine.runner.limits
        engine.generate(input_ids=prompt, sampling_params=_greedy(8))  # warm-up
        rates = []
        for _ in range(3):
            times = []
            for n in (1, out_len):
                engine.flush_cache()
                t0 = time.perf_counter()
                engine.generate(input_ids=prompt, sampling_params=_greedy(n))
                times.append(time.perf_counter() - t0)
            rates.append((out_len - 1) / (times[1] - times[0]))
        return {
            "decode_tok_s": statistics.median(rates),
            "rates": rates,
            "weight_bytes": lim.weight_bytes,
            **_server(engine),
        }
    finally:
        engine.shutdown()


def run_workload(
    path: str, device: str, prompts: list, outs: list, options: dict
) -> dict[str, Any]:
    """One timed ``generate`` of the whole workload (after a warm-up and a cache flush)."""
    engine = _engine(path, device, **options)
    try:
        engine.generate(input_ids=prompts[0][:16], sampling_params=_greedy(4))
        engine.flush_cache()
        before = engine.get_server_info()
        t0 = time.perf_counter()
        results = engine.generate(input_ids=prompts, sampling_params=[_greedy(n) for n in outs])
        wall = time.perf_counter() - t0
        after = engine.get_server_info()
        generated = sum(len(r["output_ids"]) for r in results)
        if generated != sum(outs):
            raise RuntimeError(f"generated {generated} tokens, expected {sum(outs)}")
        busy = after["forward_seconds"] - before["forward_seconds"]
        cached = sum(r["meta_info"].get("cached_tokens", 0) for r in results)
        return {
            "wall_s": wall,
            "output_tokens": generated,
            "output_tok_s": generated / wall,
            "requests_s": len(prompts) / wall,
            "device_busy_s": busy,
            "idle_share": max(0.0, 1.0 - busy / wall),
            "cached_tokens": cached,
            "prompt_tokens": sum(len(p) for p in prompts),
            **_server(engine),
        }
    finally:
        engine.shutdown()


def _server(engine) -> dict[str, Any]:
    info = engine.get_server_info()
    keys = ("attention_backend", "cuda_graph_mb", "max_total_num_tokens", "max_running_requests")
    return {k: info.get(k) for k in keys}


# ---- driver -----------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    ap.add_argument("--dataset", default=DEFAULT_SHAREGPT, help="ShareGPT JSON")
    ap.add_argument("--phases", default="batch1,throughput,overlap,prefix")
    ap.add_argument("--num-prompts", type=int, default=1000)
    ap.add_argument("--concurrency", default="64,256")
    ap.add_argument("--output-len", type=int, default=256, help="output tokens per request")
    ap.add_argument("--batch1-prompt-len", type=int, default=128)
    ap.add_argument("--batch1-output-len", type=int, default=256)
    ap.add_argument("--prefix-len", type=int, default=2048)
    ap.add_argument("--prefix-requests", type=int, default=128)
    ap.add_argument("--mem-bw-gbs", type=float, default=4800.0, help="roofline memory bandwidth")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--plot-file", default=None, help=PLOT_HELP)
    args = ap.parse_args()
    check_args(ap, args, {"phases": PHASES})

    phases = args.phases
    path = str(model_dir(args.shape))
    prompts = load_prompts(
        repo_path(args.dataset), repo_path(args.tokenizer), args.num_prompts, 1024
    )
    outs = [args.output_len] * len(prompts)
    env = environment(0)
    print(
        f"# command: {env['command']}\n# date: {env['date']}, commit {env['git_commit']}",
        flush=True,
    )
    _print_device(args.device)
    report: dict[str, Any] = {
        "env": env,
        "args": vars(args) | {"json_out": str(args.json_out)},
        "targets": TARGETS,
    }

    if "batch1" in phases:
        flat = [t for p in prompts for t in p]
        r = in_subprocess(
            run_batch1, path, args.device, flat[: args.batch1_prompt_len], args.batch1_output_len
        )
        roofline = args.mem_bw_gbs * 1e9 / r["weight_bytes"]
        r |= {"roofline_tok_s": roofline, "roofline_share": r["decode_tok_s"] / roofline}
        report["batch1"] = r
        print(
            f"batch-1 decode: {r['decode_tok_s']:.1f} tok/s = {r['roofline_share']:.0%} of the "
            f"{roofline:.0f} tok/s roofline ({r['weight_bytes'] / 1e9:.2f} GB of weights at {args.mem_bw_gbs:.0f} GB/s); "
            f"backend {r['attention_backend']}, graphs {r['cuda_graph_mb']:.0f} MB",
            flush=True,
        )
    runs: dict[str, dict] = {}
    conc = [int(c) for c in args.concurrency.split(",")]
    if "throughput" in phases or "overlap" in phases:
        todo = [(c, False) for c in conc if "throughput" in phases]
        if "overlap" in phases:
            todo += [(conc[0], True)] + ([] if "throughput" in phases else [(conc[0], False)])
        for c, no_overlap in todo:
            key = f"c{c}" + ("_no_overlap" if no_overlap else "")
            overlap = (
                {"disable_overlap_schedule": True}
                if no_overlap
                else {"enable_overlap_schedule": True}
            )
            opts = {"max_running_requests": c, **overlap}
            runs[key] = r = in_subprocess(run_workload, path, args.device, prompts, outs, opts)
            print(
                f"ShareGPT {len(prompts)} requests, concurrency {c}{' (overlap off)' if no_overlap else ''}: "
                f"{r['output_tok_s']:.0f} output tok/s, {r['requests_s']:.2f} req/s, "
                f"GPU idle {r['idle_share']:.1%} ({r['wall_s']:.1f} s)",
                flush=True,
            )
        report["throughput"] = runs
        if "overlap" in phases:
            ratio = (
                runs[f"c{conc[0]}"]["output_tok_s"] / runs[f"c{conc[0]}_no_overlap"]["output_tok_s"]
            )
            report["overlap_ratio"] = ratio
            print(f"overlap on / off at concurrency {conc[0]}: {ratio:.2f}x", flush=True)
    if "prefix" in phases:
        flat = [t for p in prompts for t in p]
        prefix = flat[: args.prefix_len]
        questions = [
            flat[args.prefix_len + 64 * i : args.prefix_len + 64 * (i + 1)]
            for i in range(args.prefix_requests)
        ]
        work = [prefix + q for q in questions]
        res = {}
        for name, off in (("radix_on", False), ("radix_off", True)):
            res[name] = in_subprocess(
                run_workload,
                path,
                args.device,
                work,
                [32] * len(work),
                {"disable_radix_cache": off},
            )
            print(
                f"shared prefix, {name}: {res[name]['requests_s']:.2f} req/s, {res[name]['wall_s']:.2f} s, "
                f"cached {res[name]['cached_tokens']} / {res[name]['prompt_tokens']} prompt tokens",
                flush=True,
            )
        res["ratio"] = res["radix_on"]["requests_s"] / res["radix_off"]["requests_s"]
        report["prefix"] = res
        print(f"shared prefix radix on / off: {res['ratio']:.2f}x", flush=True)

    report["verdicts"] = _verdicts(report, conc)
    for k, v in report["verdicts"].items():
        print(f"target {k}: {v}")
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {args.json_out}")
    write_plot("gpu", report, plot_path(args.plot_file, args.json_out))


def _verdicts(report: dict, conc: list[int]) -> dict[str, str]:
    out = {}

    def judge(name: str, value: float | None) -> None:
        if value is not None:
            ok = value >= TARGETS[name]
            out[name] = f"{value:.2f} vs >= {TARGETS[name]}: {'met' if ok else 'NOT met'}"

    judge("batch1_tok_s", report.get("batch1", {}).get("decode_tok_s"))
    best = max(
        (
            r["output_tok_s"]
            for k, r in report.get("throughput", {}).items()
            if "no_overlap" not in k
        ),
        default=None,
    )
    judge("output_tok_s", best)
    judge("prefix_ratio", report.get("prefix", {}).get("ratio"))
    judge("overlap_ratio", report.get("overlap_ratio"))
    return out


def _print_device(device: str) -> None:
    import torch

    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        print(
            f"# GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}",
            flush=True,
        )
    else:
        print(f"# device: {device}, torch {torch.__version__}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
