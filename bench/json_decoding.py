"""Structured output: grammar compile time and mask cost, and end-to-end JSON decoding speed.

Part 1 (``--part masks``, in ``json_decoding_masks.py``), GPT-2 vocabulary, a seeded sample of
the JSONSchemaBench splits in ``--data`` (``--max-per-split`` per split; ``--all`` for every
schema), once per grammar backend of ``--backends`` (outlines, llguidance, auto): per split and
overall, compile p50/p95, share compiled within ``--compile-timeout``, errors by class, mask
p50/p99, and a side-by-side table of the backends against the targets.

Part 2 (``--part e2e``): SGLang's json_jump_forward character workload (``--num-prompts``
names, one regex with fixed formatting and ``[\\w\\d\\s]{1,16}`` free-text fields), the 114M
random-weight Llama of ``bench/common.py``, fp32, greedy. Systems, each in a fresh process:
RadixLM ``Engine`` with jump-forward, without it, with jump-forward on the llguidance grammar
backend (``--e2e-llguidance``, on by default when it is installed), and transformers
``generate`` (static batches
of ``--hf-batch-size``) with a logits processor on outlines-core (an ``Index`` over the same
byte vocabulary, one ``Guide`` per row writing a bitmask each step; rows stop when their guide
terminates). Every system compiles the grammar before its timed run. RadixLM's ``fill_mask``
is also timed inside its scheduler. Speed ratios are in requests/s over the same requests:
jump-forward re-tokenizes forced text canonically, so its outputs hold fewer tokens than the
same text sampled token by token.

    python bench/json_decoding.py --json-out bench/results/json_decoding_<date>.json

Targets: mask p50 <= 50 us, compile p50 <= 100 ms, >= 90 % compiled; jump-on / jump-off
>= 1.5x; RadixLM (jump-on) / transformers >= 3x.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from common import (
    DEFAULT_TOKENIZER,
    ModelShape,
    ensure_model,
    environment,
    in_subprocess,
    print_header,
    repo_path,
    worker_setup,
)
from json_decoding_masks import TARGETS as MASK_TARGETS
from json_decoding_masks import (
    fmt,
    load_schemas,
    mask_targets,
    pct,
    print_comparison,
    print_masks,
    print_table,
    run_masks,
)

DEFAULT_DATA = "../shared/data/jsonschemabench"
DEFAULT_NAMES = "../shared/data/sglang_benchmark/json_jump_forward/dataset.txt"
TARGETS = {**MASK_TARGETS, "jump_speedup": 1.5, "hf_speedup": 3.0}
PROMPT = "Give me the information of {name} in JSON.\n"
FREE = r"[\w\d\s]{1,16}"  # SGLang's free-text field
CHARACTER_REGEX = (
    r"\{\n"
    rf'    "name": "{FREE}",\n'
    r'    "house": "(Gryffindor|Slytherin|Ravenclaw|Hufflepuff)",\n'
    r'    "blood status": "(Pure-blood|Half-blood|Muggle-born)",\n'
    r'    "occupation": "(student|teacher|auror|ministry of magic|death eater|order of the phoenix)",'
    r"\n"
    r'    "wand": \{\n'
    rf'        "wood": "{FREE}",\n'
    rf'        "core": "{FREE}",\n'
    r'        "length": [0-9]{1,2}\.[0-9]{0,2}\n'
    r"    \},\n"
    r'    "alive": "(Alive|Deceased)",\n'
    rf'    "patronus": "{FREE}"\n'
    r"\}"
)


# ---- part 2: end-to-end JSON decoding (each system in a fresh process) ----------------------
def _timed(fn: Any, sink: list[float]) -> Any:
    """``fn``, appending each call's duration (us) to ``sink``."""

    def wrapper(*a: Any) -> Any:
        t0 = time.perf_counter_ns()
        out = fn(*a)
        sink.append((time.perf_counter_ns() - t0) / 1e3)
        return out

    return wrapper


def run_radixlm(
    model_dir: str, prompts: list[list[int]], jump: bool, args: dict, backend: str = "outlines"
) -> dict:
    worker_setup(args["threads"], args["log_level"])
    import radixlm
    from radixlm.scheduler.grammar import GrammarManager

    if backend == "llguidance":
        from radixlm.constrained.llguidance_backend import LLGuidanceMatcher as Matcher
    else:
        from radixlm.constrained.outlines_backend import OutlinesMatcher as Matcher
    timings: dict[str, list[float]] = {"row": [], "batch": []}  # fill_mask in the scheduler
    Matcher.fill_mask = _timed(Matcher.fill_mask, timings["row"])  # type: ignore
    GrammarManager.fill_mask = _timed(GrammarManager.fill_mask, timings["batch"])  # type: ignore
    total = sum(len(p) for p in prompts) + len(prompts) * args["max_new_tokens"] + 1024
    engine = radixlm.Engine(
        model_dir,
        dtype="float32",
        num_threads=args["threads"],
        max_total_tokens=total,
        disable_jump_forward=not jump,
        grammar_compile_timeout=600,
        grammar_backend=backend,
    )
    sp = {"regex": CHARACTER_REGEX, "temperature": 0, "max_new_tokens": args["max_new_tokens"]}
    t0 = time.perf_counter()  # warm-up: compiles the regex (the engine caches it)
    engine.generate(input_ids=prompts[0], sampling_params={**sp, "max_new_tokens": 4})
    warmup = time.perf_counter() - t0
    engine.flush_cache()
    for v in timings.values():
        v.clear()
    stats = engine.scheduler.stats
    steps0, jumped0 = stats.forward_steps, stats.jump_forward_tokens
    t0 = time.perf_counter()
    results = engine.generate(input_ids=prompts, sampling_params=sp)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "warmup_s": warmup,
        "texts": [r["text"] for r in results],
        "output_ids": [r["output_ids"] for r in results],
        "finish": [r["meta_info"]["finish_reason"]["type"] for r in results],
        "forward_steps": stats.forward_steps - steps0,
        "jump_forward_tokens": stats.jump_forward_tokens - jumped0,
        "row_mask_p50_us": pct(timings["row"], 0.5),
        "row_mask_p99_us": pct(timings["row"], 0.99),
        "batch_mask_s": sum(timings["batch"]) / 1e6,
    }


def run_hf(model_dir: str, prompts: list[list[int]], args: dict) -> dict:
    worker_setup(args["threads"], args["log_level"])
    import torch
    import transformers
    from outlines_core import Guide, Index, Vocabulary

    from radixlm.constrained.vocabulary import build_token_vocabulary

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    eos, vocab = int(tok.eos_token_id), model.config.vocab_size
    words = (vocab + 31) // 32
    t0 = time.perf_counter()
    groups = build_token_vocabulary(tok, vocab, [eos]).ids_by_bytes
    index = Index(CHARACTER_REGEX, Vocabulary(eos, groups))
    warmup = time.perf_counter() - t0

    class Rows:
        """One outlines-core ``Guide`` per batch row, advanced by the row's newest token."""

        def __init__(self, n: int, width: int) -> None:
            self.guides = [Guide(index) for _ in range(n)]
            self.done = [False] * n
            self.tokens: list[list[int]] = [[] for _ in range(n)]
            self.width = width
            self.mask = torch.zeros((n, words), dtype=torch.int32)
            self.bits = torch.arange(32, dtype=torch.int32)

        def sync(self, input_ids: torch.Tensor) -> None:
            if input_ids.shape[1] == self.width:
                return
            self.width = input_ids.shape[1]
            for row, t in enumerate(input_ids[:, -1].tolist()):
                if not self.done[row]:
                    g = self.guides[row]
                    g.advance(t, False)
                    self.tokens[row].append(t)
                    self.done[row] = t == eos or (g.is_finished() and g.get_tokens() == [eos])

    class Processor(transformers.LogitsProcessor):
        def __init__(self, rows: Rows) -> None:
            self.rows = rows

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            r = self.rows
            r.sync(input_ids)
            for row, g in enumerate(r.guides):
                if not r.done[row]:  # finished rows: generate pads them anyway
                    g.write_mask_into(r.mask[row].data_ptr(), words, 4)
            allowed = ((r.mask.unsqueeze(-1) >> r.bits) & 1).bool().view(len(r.guides), -1)
            return scores.masked_fill(~allowed[:, : scores.shape[1]], float("-inf"))

    class Stop(transformers.StoppingCriteria):
        def __init__(self, rows: Rows) -> None:
            self.rows = rows

        def __call__(self, input_ids: torch.Tensor, scores: Any, **kw: Any) -> torch.Tensor:
            self.rows.sync(input_ids)
            return torch.tensor(self.rows.done)

    def generate(batch: list[list[int]], new_tokens: int) -> Rows:
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), eos, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(batch):
            ids[i, width - len(p) :], attn[i, width - len(p) :] = torch.tensor(p), 1
        rows = Rows(len(batch), width)
        model.generate(
            ids,
            attention_mask=attn,
            do_sample=False,
            max_new_tokens=new_tokens,
            logits_processor=transformers.LogitsProcessorList([Processor(rows)]),
            stopping_criteria=transformers.StoppingCriteriaList([Stop(rows)]),
            eos_token_id=eos,
            pad_token_id=eos,
        )
        return rows  # Stop has synced the last step's tokens

    bs, outputs, finish = args["hf_batch_size"], [], []
    with torch.inference_mode():
        generate(prompts[:1], 4)
        t0 = time.perf_counter()
        for s in range(0, len(prompts), bs):
            rows = generate(prompts[s : s + bs], args["max_new_tokens"])
            outputs += rows.tokens
            finish += ["stop" if d else "length" for d in rows.done]
        wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "warmup_s": warmup,
        "texts": [tok.decode(o) for o in outputs],
        "output_ids": outputs,
        "finish": finish,
    }


def forced_share(tokenizer_dir: Path, outputs: list[list[int]]) -> dict[str, Any]:
    """Of the (jump-off) output tokens, how many lie inside a forced continuation of >= 2 bytes
    (what jump-forward appends without sampling), and how many such runs there are."""
    from transformers import AutoTokenizer

    from radixlm.constrained.base import GrammarSpec
    from radixlm.constrained.outlines_backend import OutlinesBackend

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    backend = OutlinesBackend(tok, len(tok), [tok.eos_token_id])
    grammar = backend.compile(GrammarSpec("regex", CHARACTER_REGEX))
    total = forced = runs = 0
    for ids in outputs:
        m, in_run = grammar.matcher(), False
        for t in ids:
            fb, piece = m.forced_bytes(), backend.vocab.token_bytes[t] or b""
            hit = len(fb) >= 2 and bool(piece) and fb.startswith(piece)
            forced, runs, in_run = forced + hit, runs + (hit and not in_run), hit
            total += 1
            m.advance(t)
    return {
        "tokens": total,
        "forced": forced,
        "forced_runs": runs,
        "step_bound": total / max(1, total - forced),
    }


def run_e2e(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    tokenizer_dir = repo_path(args.tokenizer)
    model_dir = ensure_model(ModelShape(), tokenizer_dir, None)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    names = [ln.strip() for ln in repo_path(args.names).read_text().splitlines() if ln.strip()]
    prompts = [tok.encode(PROMPT.format(name=n)) for n in names[: args.num_prompts]]
    print(f"\n== Part 2: end-to-end, {len(prompts)} prompts, {model_dir.name} ==", flush=True)
    work = {k: getattr(args, k) for k in ("threads", "log_level", "max_new_tokens")}
    work["hf_batch_size"] = args.hf_batch_size
    systems: dict[str, dict] = {}
    for name, fn, extra in (
        ("radixlm_jump", run_radixlm, (True, work)),
        ("radixlm_no_jump", run_radixlm, (False, work)),
        ("radixlm_llguidance_jump", run_radixlm, (True, work, "llguidance")),
        ("transformers", run_hf, (work,)),
    ):
        if (name == "transformers" and args.skip_hf) or (
            name == "radixlm_llguidance_jump" and not args.e2e_llguidance
        ):
            continue
        print(f"  {name} ... (1-min load {os.getloadavg()[0]:.2f})", flush=True)
        load = os.getloadavg()[0]
        r = in_subprocess(fn, str(model_dir), prompts, *extra)
        r["load_before_after"] = (load, os.getloadavg()[0])  # other work on the machine
        done = [i for i, f in enumerate(r["finish"]) if f == "stop"]
        tokens = sum(map(len, r["output_ids"]))
        r.update(
            requests=len(prompts),
            completed=len(done),
            output_tokens=tokens,
            matching_completed=sum(
                bool(re.fullmatch(CHARACTER_REGEX, r["texts"][i])) for i in done
            ),
            req_s=len(prompts) / r["wall_s"],
            output_tok_s=tokens / r["wall_s"],
        )
        systems[name] = r
    bound = forced_share(tokenizer_dir, systems["radixlm_no_jump"]["output_ids"])
    off = systems["radixlm_no_jump"]["texts"]
    same = {k: sum(a == b for a, b in zip(off, r["texts"])) for k, r in systems.items()}
    for r in systems.values():
        r["output_ids"] = [len(o) for o in r.pop("output_ids")]  # lengths only in the JSON
    # Ratios of requests/s over the same requests (see the module docstring).
    ratios = {
        "jump_speedup": systems["radixlm_jump"]["req_s"] / systems["radixlm_no_jump"]["req_s"]
    }
    if "transformers" in systems:
        ratios["hf_speedup"] = systems["radixlm_jump"]["req_s"] / systems["transformers"]["req_s"]
    if "radixlm_llguidance_jump" in systems:  # informational, no target
        llg = systems["radixlm_llguidance_jump"]["req_s"]
        ratios["llguidance_over_outlines"] = llg / systems["radixlm_jump"]["req_s"]
    return {
        "systems": systems,
        "forced": bound,
        "same_text_as_no_jump": same,
        "ratios": ratios,
        "prompt_tokens": sum(map(len, prompts)),
        "regex": CHARACTER_REGEX,
        "prompt": PROMPT,
    }


def print_e2e(res: dict[str, Any]) -> list[bool]:
    s = res["systems"]
    rows = [
        f"{name}|{r['wall_s']:.2f}|{r['req_s']:.2f}|{r['output_tokens']}|{r['output_tok_s']:.1f}|"
        f"{r.get('forward_steps', '-')}|{r.get('jump_forward_tokens', '-')}|{r['completed']}|"
        f"{r['matching_completed'] / max(1, r['completed']):.0%}|{r['warmup_s']:.2f}".split("|")
        for name, r in s.items()
    ]
    print()
    print_table(
        "system|wall s|req/s|out tok|tok/s|steps|jumped|done|match|warm-up s".split("|"), rows
    )
    print("(warm-up s: the grammar compile, plus 4 tokens for RadixLM; not in wall s)")
    for name, r in s.items():
        if "row_mask_p50_us" in r:
            print(
                f"{name}: fill_mask in the scheduler p50 {fmt(r['row_mask_p50_us'])} us, p99 "
                f"{fmt(r['row_mask_p99_us'])} us per row; all mask building "
                f"{r['batch_mask_s']:.3f} s ({r['batch_mask_s'] / r['wall_s']:.2%} of wall)"
            )
    print(
        "outputs identical to radixlm_no_jump's:",
        ", ".join(f"{k} {v}/{len(s[k]['texts'])}" for k, v in res["same_text_as_no_jump"].items()),
    )
    f, jump = res["forced"], s["radixlm_jump"]
    print(
        f"jump-off outputs: {f['tokens']} tokens, {f['forced']} of them inside forced runs "
        f"({f['forced'] / max(1, f['tokens']):.0%}, {f['forced_runs']} runs): per request, "
        f"jump-forward can at best cut decode steps {f['step_bound']:.2f}x; jump-on sampled "
        f"{jump['output_tokens'] - jump['jump_forward_tokens']} tokens and appended "
        f"{jump['jump_forward_tokens']}; forward steps {s['radixlm_no_jump']['forward_steps']}"
        f" -> {jump['forward_steps']}"
    )
    if "llguidance_over_outlines" in res["ratios"]:
        print(
            "llguidance / outlines backend (both jump-on) req/s: "
            f"{res['ratios']['llguidance_over_outlines']:.2f}x (no target)"
        )
    passed = []
    for key, label in (("jump_speedup", "jump-on / jump-off"), ("hf_speedup", "RadixLM / HF")):
        if key in res["ratios"]:
            v = res["ratios"][key]
            passed.append(v >= TARGETS[key])
            verdict = "PASS" if passed[-1] else "FAIL"
            print(f"target {label} req/s >= {TARGETS[key]}x: {v:.2f}x -> {verdict}")
    return passed


# ---- main -----------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--part", choices=("all", "masks", "e2e"), default="all")
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="relative to the repo root")
    p.add_argument("--data", default=DEFAULT_DATA, help="JSONSchemaBench: one dir per split")
    p.add_argument("--max-per-split", type=int, default=100, help="seeded sample per split")
    p.add_argument("--all", action="store_true", help="every schema (overrides --max-per-split)")
    p.add_argument("--compile-timeout", type=float, default=10.0, help="seconds per schema")
    p.add_argument(
        "--backends", default="outlines,llguidance,auto", help="grammar backends of part 1"
    )
    p.add_argument("--walk-steps", type=int, default=64, help="random-walk tokens per schema")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--names", default=DEFAULT_NAMES, help="SGLang json_jump_forward names")
    p.add_argument("--num-prompts", type=int, default=50)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--hf-batch-size", type=int, default=8, help="static batch size for HF")
    p.add_argument("--skip-hf", action="store_true", help="leave out the transformers system")
    p.add_argument(
        "--e2e-llguidance",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run RadixLM (jump-on) on the llguidance backend (default: if installed)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (part 2)")
    p.add_argument("--json-out", default=None, help="write every number here as JSON")
    p.add_argument("--log-level", default="warning", help="logging level inside the workers")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.e2e_llguidance is None:
        from radixlm.constrained.llguidance_backend import llguidance_available

        args.e2e_llguidance = llguidance_available()
    env = environment(args.threads)
    print_header(env, args.threads)
    report: dict[str, Any] = {"environment": env, "args": vars(args), "targets": TARGETS}
    passed: list[bool] = []
    if args.part in ("all", "masks"):
        schemas = load_schemas(args)
        report["masks"] = {}
        for backend in args.backends.split(","):
            res = report["masks"][backend] = run_masks(args, backend, schemas)
            print_masks(backend, res)
            passed += [ok for _, _, ok in mask_targets(res["summary"]["overall"])]
            for r in res["records"]:  # per-step lists -> a few numbers per schema in the JSON
                w = r.pop("walk", None) or {}
                r["walk"] = {
                    "steps": len(w.get("step", [])),
                    "new": len(w.get("new", [])),
                    "p50_us": pct(w.get("step", []), 0.5),
                    "end": w.get("end"),
                }
        print_comparison(report["masks"])
    if args.part in ("all", "e2e"):
        report["e2e"] = run_e2e(args)
        passed += print_e2e(report["e2e"])
    print(f"\ntargets passed: {sum(passed)}/{len(passed)}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
