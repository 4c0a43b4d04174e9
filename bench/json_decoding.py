"""Structured output: grammar compile time and mask cost, and end-to-end JSON decoding speed.

Part 1 (``--part masks``, in ``json_decoding_masks.py``), GPT-2 vocabulary, a seeded sample of
the JSONSchemaBench splits in ``--data`` (``--max-per-split`` per split; ``--all`` for every
schema), side by side for the systems of ``--backends``: RadixLM's ``auto``, ``llguidance``,
``outlines`` and ``xgrammar`` backends and llguidance used directly. Per system: share compiled,
exact (nothing unenforced), compiled with keywords dropped and reported, refused by class;
compile p50/p95; mask p50/p99 over seeded random walks; of the finished walks, the share valid
by ``jsonschema``, the share flagged ``valid: false`` and the invalid ones left unflagged (must
be none). See that module's docstring.

Part 2 (``--part e2e``): SGLang's json_jump_forward character workload (``--num-prompts``
names) as SGLang's regex (fixed formatting, free-text fields) and as a JSON schema decoded in
the default compact layout (``--workloads``); the 114M random-weight Llama of
``bench/common.py``, fp32, greedy. For each workload and grammar backend
(``--e2e-backends``), RadixLM ``Engine`` with jump-forward on and off, alternating within each
of ``--passes`` passes, each run in a fresh process; and once transformers ``generate`` (static
batches of ``--hf-batch-size``) with a logits processor on outlines-core (an ``Index`` over the
same byte vocabulary, one ``Guide`` per row writing a bitmask each step; rows stop when their
guide terminates) on the regex. Every system compiles the grammar before its timed run.
RadixLM's ``fill_mask`` and jump planning are also timed inside its scheduler. Speed ratios are
in requests/s over the same requests: jump-forward re-tokenizes forced text canonically, so its
outputs hold fewer tokens than the same text sampled token by token.

    python bench/json_decoding.py --json-out bench/results/json_decoding_<date>.json

Targets (auto): >= 97 % compiled, 100 % of finished outputs valid or flagged, >= 99 % valid,
compile p50 <= 10 ms and p95 <= 100 ms, mask p50 <= 50 us; jump-on / jump-off >= 1.5x in forward
steps and in requests/s on both backends; RadixLM (jump-on) / transformers >= 3x.

With ``--json-out``, a plot beside it (``--plot-file``; ``bench/plots.py``): part 1's grammar
compile-time CDF and mask-cost CDF per system, part 2's requests/s with jump-forward on and off
per workload and backend (every pass a dot).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
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
    load_schemas,
    mask_targets,
    pct,
    print_comparison,
    print_masks,
    print_table,
    run_masks,
)
from plots import PLOT_HELP, plot_path, write_plot

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
# The same character as a JSON schema, decoded in the default (compact) layout: the workload of
# a JSON API with default settings. Its free-text fields take the characters SGLang's do.
_FREE_TEXT = {"type": "string", "pattern": "^[A-Za-z0-9 ]{1,16}$"}
CHARACTER_SCHEMA = {
    "type": "object",
    "properties": {
        "name": _FREE_TEXT,
        "house": {"enum": ["Gryffindor", "Slytherin", "Ravenclaw", "Hufflepuff"]},
        "blood status": {"enum": ["Pure-blood", "Half-blood", "Muggle-born"]},
        "occupation": {"enum": ["student", "teacher", "auror", "ministry of magic",
                                "death eater", "order of the phoenix"]},
        "wand": {
            "type": "object",
            # A JSON number has no bound on its digits (a random model writes them forever);
            # SGLang's regex takes 1-2 digits, a dot and 0-2 digits: the same, as a string.
            "properties": {"wood": _FREE_TEXT, "core": _FREE_TEXT,
                           "length": {"type": "string", "pattern": "^[0-9]{1,2}\\.[0-9]{1,2}$"}},
            "required": ["wood", "core", "length"],
        },
        "alive": {"enum": ["Alive", "Deceased"]},
        "patronus": _FREE_TEXT,
    },
    "required": ["name", "house", "blood status", "occupation", "wand", "alive", "patronus"],
}  # fmt: skip
WORKLOADS = {"regex": ("regex", CHARACTER_REGEX), "schema": ("json_schema", CHARACTER_SCHEMA)}


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
    model_dir: str, prompts: list[list[int]], jump: bool, args: dict, backend: str, workload: str
) -> dict:
    worker_setup(args["threads"], args["log_level"])
    import radixlm
    from radixlm.scheduler.grammar import GrammarManager

    if backend == "llguidance":
        from radixlm.constrained.llguidance_backend import LLGuidanceMatcher as Matcher
    else:
        from radixlm.constrained.outlines_backend import OutlinesMatcher as Matcher
    timings: dict[str, list[float]] = {"row": [], "batch": [], "plan": []}
    Matcher.fill_mask = _timed(Matcher.fill_mask, timings["row"])  # type: ignore
    GrammarManager.fill_mask = _timed(GrammarManager.fill_mask, timings["batch"])  # type: ignore
    GrammarManager.plan_jump_forward = _timed(  # type: ignore
        GrammarManager.plan_jump_forward, timings["plan"]
    )
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
    key, value = WORKLOADS[workload]
    value = json.dumps(value) if key == "json_schema" else value
    sp = {key: value, "temperature": 0, "max_new_tokens": args["max_new_tokens"]}
    t0 = time.perf_counter()  # warm-up: compiles the grammar (the engine caches it)
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
    engine.shutdown()
    return {
        "wall_s": wall,
        "warmup_s": warmup,
        "texts": [r["text"] for r in results],
        "output_ids": [r["output_ids"] for r in results],
        "finish": [r["meta_info"]["finish_reason"]["type"] for r in results],
        "valid": [r["meta_info"].get("constraint", {}).get("valid") for r in results],
        "forward_steps": stats.forward_steps - steps0,
        "jump_forward_tokens": stats.jump_forward_tokens - jumped0,
        "row_mask_p50_us": pct(timings["row"], 0.5),
        "row_mask_p99_us": pct(timings["row"], 0.99),
        "batch_mask_s": sum(timings["batch"]) / 1e6,
        "plan_jump_s": sum(timings["plan"]) / 1e6,
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


def _matches(workload: str, text: str) -> bool:
    if workload == "regex":
        return bool(re.fullmatch(CHARACTER_REGEX, text))
    import jsonschema

    try:
        return jsonschema.Draft202012Validator(CHARACTER_SCHEMA).is_valid(json.loads(text))
    except ValueError:
        return False


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
    # Jump-on and jump-off alternate within each pass (the machine is shared and noisy).
    plan = [
        (f"{w}_{b}_{'jump' if j else 'no_jump'}", (j, work, b, w))
        for w in args.workloads
        for b in args.e2e_backends
        for j in (True, False)
    ]
    passes: list[dict[str, dict]] = []
    for p in range(args.passes):
        systems: dict[str, dict] = {}
        for name, extra in plan:
            load = os.getloadavg()[0]
            print(f"  pass {p + 1}: {name} ... (1-min load {load:.2f})", flush=True)
            systems[name] = _summarise(
                in_subprocess(run_radixlm, str(model_dir), prompts, *extra), extra[3], load
            )
        if p == 0 and not args.skip_hf and "regex" in args.workloads:
            print("  pass 1: transformers (regex) ...", flush=True)
            hf = in_subprocess(run_hf, str(model_dir), prompts, work)
            systems["transformers"] = _summarise(hf, "regex", os.getloadavg()[0])
        passes.append(systems)
    first = passes[0]
    reference = next((k for k in first if k.startswith("regex_") and k.endswith("no_jump")), None)
    bound = forced_share(tokenizer_dir, first[reference]["ids"]) if reference else None
    for systems in passes:
        for r in systems.values():
            r.pop("ids", None)
    ratios: dict[str, list[float]] = {}
    for systems in passes:
        for w in args.workloads:
            for b in args.e2e_backends:
                on, off = systems[f"{w}_{b}_jump"], systems[f"{w}_{b}_no_jump"]
                ratios.setdefault(f"{w}_{b}_jump_speedup", []).append(on["req_s"] / off["req_s"])
                ratios.setdefault(f"{w}_{b}_step_ratio", []).append(
                    off["forward_steps"] / max(1, on["forward_steps"])
                )
    if "transformers" in first:
        best = first.get("regex_outlines_jump") or next(iter(first.values()))
        ratios["hf_speedup"] = [best["req_s"] / first["transformers"]["req_s"]]
    return {
        "passes": passes,
        "forced_regex_no_jump": bound,
        "ratios": ratios,
        "prompt_tokens": sum(map(len, prompts)),
        "regex": CHARACTER_REGEX,
        "schema": CHARACTER_SCHEMA,
        "prompt": PROMPT,
    }


def _summarise(r: dict, workload: str, load: float) -> dict:
    done = [i for i, f in enumerate(r["finish"]) if f == "stop"]
    tokens = sum(map(len, r["output_ids"]))
    r.update(
        requests=len(r["finish"]),
        completed=len(done),
        output_tokens=tokens,
        matching_completed=sum(_matches(workload, r["texts"][i]) for i in done),
        req_s=len(r["finish"]) / r["wall_s"],
        output_tok_s=tokens / r["wall_s"],
        load_before_after=(load, os.getloadavg()[0]),
        ids=r.pop("output_ids"),
    )
    r.pop("texts")
    return r


def print_e2e(res: dict[str, Any]) -> list[bool]:
    for p, systems in enumerate(res["passes"]):
        rows = [
            f"{name}|{r['wall_s']:.2f}|{r['req_s']:.2f}|{r['output_tokens']}|"
            f"{r['output_tok_s']:.1f}|{r.get('forward_steps', '-')}|"
            f"{r.get('jump_forward_tokens', '-')}|{r['completed']}|"
            f"{r['matching_completed'] / max(1, r['completed']):.0%}|{r['warmup_s']:.2f}|"
            f"{r.get('plan_jump_s', 0):.2f}|{r['load_before_after'][0]:.1f}".split("|")
            for name, r in systems.items()
        ]
        print(f"\npass {p + 1}")
        print_table(
            "system|wall s|req/s|out tok|tok/s|steps|jumped|done|valid|warm-up s|plan s|load".split(
                "|"
            ),
            rows,
        )
    print(
        "(warm-up s: the grammar compile, plus 4 tokens for RadixLM; not in wall s; plan s: "
        "time spent planning jumps, in wall s)"
    )
    f = res["forced_regex_no_jump"]
    if f is not None:
        print(
            f"regex, jump-off outputs: {f['tokens']} tokens, {f['forced']} of them inside forced "
            f"runs ({f['forced'] / max(1, f['tokens']):.0%}, {f['forced_runs']} runs): "
            f"jump-forward can at best cut decode steps {f['step_bound']:.2f}x"
        )
    passed = []
    for key, values in res["ratios"].items():
        med = statistics.median(values)
        each = ", ".join(f"{v:.2f}" for v in values)
        target = TARGETS["hf_speedup"] if key == "hf_speedup" else TARGETS["jump_speedup"]
        ok = med >= target
        passed.append(ok)
        print(
            f"{key}: median {med:.2f}x (passes: {each}); target >= {target}x -> "
            f"{'PASS' if ok else 'FAIL'}"
        )
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
    p.add_argument("--compile-timeout", type=float, default=30.0, help="seconds per schema")
    p.add_argument(
        "--backends",
        default="auto,llguidance,outlines,xgrammar,llguidance-direct",
        help="systems of part 1 (xgrammar is skipped when it is not installed)",
    )
    p.add_argument("--walk-steps", type=int, default=400, help="random-walk tokens per schema")
    p.add_argument("--walks", type=int, default=2, help="random walks per schema")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--names", default=DEFAULT_NAMES, help="SGLang json_jump_forward names")
    p.add_argument("--num-prompts", type=int, default=50)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--hf-batch-size", type=int, default=8, help="static batch size for HF")
    p.add_argument("--skip-hf", action="store_true", help="leave out the transformers system")
    p.add_argument("--passes", type=int, default=2, help="part 2: alternating passes")
    p.add_argument("--workloads", nargs="+", default=["regex", "schema"], choices=WORKLOADS)
    p.add_argument(
        "--e2e-backends",
        nargs="+",
        default=["outlines", "llguidance"],
        choices=("outlines", "llguidance", "auto"),
        help="part 2: grammar backends",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (part 2)")
    p.add_argument("--json-out", default=None, help="write every number here as JSON")
    p.add_argument("--plot-file", default=None, help=PLOT_HELP)
    p.add_argument("--log-level", default="warning", help="logging level inside the workers")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    env = environment(args.threads)
    print_header(env, args.threads)
    report: dict[str, Any] = {"environment": env, "args": vars(args), "targets": TARGETS}
    passed: list[bool] = []
    if args.part in ("all", "masks"):
        report["masks"] = run_masks(args, args.backends.split(","), load_schemas(args))
        for system, res in report["masks"].items():
            print_masks(system, res)
        if "auto" in report["masks"]:  # the part-1 targets are the server's (auto)
            passed += [ok for _, _, ok in mask_targets(report["masks"]["auto"]["summary"])]
        print_comparison(report["masks"])
    if args.part in ("all", "e2e"):
        report["e2e"] = run_e2e(args)
        passed += print_e2e(report["e2e"])
    print(f"\ntargets passed: {sum(passed)}/{len(passed)}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json_out}")
    write_plot("json_decoding", report, plot_path(args.plot_file, args.json_out))


if __name__ == "__main__":
    main()
