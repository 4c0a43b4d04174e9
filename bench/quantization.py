"""w8a16 against bf16 on the 120M benchmark Llama: greedy agreement, prompt-logprob drift and
batch-1 / batch-8 decode time, in one run (each system in its own process, alternating).

Greedy agreement: the share of identical outputs and the mean length of the common prefix of
``--num-prompts`` ShareGPT prompts x ``--output-len`` tokens. Drift: the mean and max absolute
difference of teacher-forced prompt-token logprobs (the same prompts) against bf16. Decode time:
ms per step of one request and of 8, from the difference of a 65-token and a 1-token request
on fresh prompts (so prefill cancels), best of ``--repeats``.

Example (about 3 minutes on 2 cores; data paths as in bench/common.py):

    python bench/quantization.py --output-file bench/results/quantization_DATE.json

With ``--output-file``, a plot beside it (``--plot-file``; ``bench/plots.py``): decode ms per step,
prompt-logprob drift and greedy agreement per system.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    DEFAULT_SHAREGPT,
    DEFAULT_TOKENIZER,
    ModelShape,
    agreement,
    ensure_model,
    environment,
    in_subprocess,
    load_prompts,
    print_header,
    repo_path,
    worker_setup,
)
from plots import PLOT_HELP, plot_path, write_plot

SYSTEMS = {
    "bf16": {"dtype": "bfloat16"},
    "w8a16": {"dtype": "bfloat16", "quantization": "w8a16"},
    "fp32": {"dtype": "float32"},
}


def run_system(
    model_dir: str, options: dict, prompts: list, out_len: int, threads: int, repeats: int
):
    worker_setup(threads, "warning")
    import radixlm

    engine = radixlm.Engine(model_dir, max_total_tokens=16384, num_threads=threads, **options)
    greedy = {"temperature": 0, "max_new_tokens": out_len, "ignore_eos": True}
    outs = engine.generate(input_ids=prompts, sampling_params=greedy)
    lps = engine.generate(
        input_ids=prompts,
        sampling_params={"max_new_tokens": 0},
        return_logprob=True,
        logprob_start_len=0,
    )
    step_ms = {}
    for bs in (1, 8):
        times: dict[int, list[float]] = {1: [], 65: []}
        for r in range(repeats):
            for n in (1, 65):
                ids = [
                    [5000 + 97 * r + 13 * n + i] + prompts[i % len(prompts)][:300]
                    for i in range(bs)
                ]
                t = time.perf_counter()
                engine.generate(input_ids=ids, sampling_params={**greedy, "max_new_tokens": n})
                times[n].append(time.perf_counter() - t)
        step_ms[bs] = (min(times[65]) - min(times[1])) / 64 * 1e3
    engine.shutdown()
    return {
        "outputs": [o["output_ids"] for o in outs],
        "prompt_logprobs": [
            [x[0] for x in r["meta_info"]["input_token_logprobs"][1:]] for r in lps
        ],
        "step_ms": step_ms,
    }


def drift(a: list[list[float]], b: list[list[float]]) -> dict[str, float]:
    diffs = [abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    return {"mean": sum(diffs) / len(diffs), "max": max(diffs)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="relative to the repo root")
    p.add_argument("--sharegpt", default=DEFAULT_SHAREGPT, help="ShareGPT JSON")
    p.add_argument("--output-file", default=None)
    p.add_argument("--plot-file", default=None, help=PLOT_HELP)
    args = p.parse_args()
    tok_dir, data = repo_path(args.tokenizer), repo_path(args.sharegpt)
    for path, flag in ((tok_dir, "--tokenizer"), (data, "--sharegpt")):
        if not Path(path).exists():
            p.error(f"{flag} {path} does not exist")
    env = environment(args.threads)
    print_header(env, args.threads)
    model_dir = ensure_model(ModelShape(), tok_dir, None)
    prompts = load_prompts(data, tok_dir, args.num_prompts, 512)
    runs: dict[str, Any] = {}
    for name in ("bf16", "w8a16", "fp32"):
        runs[name] = in_subprocess(
            run_system,
            str(model_dir),
            SYSTEMS[name],
            prompts,
            args.output_len,
            args.threads,
            args.repeats,
        )
    report: dict[str, Any] = {"env": env, "systems": {}}
    for name in ("w8a16", "fp32"):
        report["systems"][name] = {
            "greedy_vs_bf16": agreement(runs[name]["outputs"], runs["bf16"]["outputs"]),
            "prompt_logprob_drift_vs_bf16": drift(
                runs[name]["prompt_logprobs"], runs["bf16"]["prompt_logprobs"]
            ),
        }
    report["systems"]["w8a16"]["prompt_logprob_drift_vs_fp32"] = drift(
        runs["w8a16"]["prompt_logprobs"], runs["fp32"]["prompt_logprobs"]
    )
    report["systems"]["bf16"] = {
        "prompt_logprob_drift_vs_fp32": drift(
            runs["bf16"]["prompt_logprobs"], runs["fp32"]["prompt_logprobs"]
        )
    }
    for name, run in runs.items():
        report["systems"][name]["step_ms"] = run["step_ms"]
    for name, r in report["systems"].items():
        print(name, json.dumps(r))
    bf, w8 = runs["bf16"]["step_ms"], runs["w8a16"]["step_ms"]
    print(f"decode speed w8a16 / bf16: batch 1 {bf[1] / w8[1]:.2f}x, batch 8 {bf[8] / w8[8]:.2f}x")
    if args.output_file:
        with open(args.output_file, "w") as f:
            json.dump(report, f, indent=1)
    write_plot("quantization", report, plot_path(args.plot_file, args.output_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
