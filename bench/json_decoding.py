"""Structured output: grammar compile time and mask cost, and end-to-end JSON decoding speed.

Part 1 (``--part masks``), GPT-2 vocabulary, a seeded sample of the JSONSchemaBench splits in
``--data`` (``--max-per-split`` per split; ``--all`` for every schema). Each schema is compiled
(kind ``json_schema``, default whitespace, unenforced keywords ignored as the server does by
default) by ``OutlinesBackend`` in a worker process that is killed and restarted after
``--compile-timeout`` s. A compiled grammar then takes a seeded random walk of up to
``--walk-steps`` tokens, each uniform among the allowed ones, timing ``fill_mask`` once per
step ("new": the state's first visit, the backend builds its row; "cached": its LRU holds the
row) and again at once ("hot"). Per split and overall: compile p50/p95, share compiled within
the timeout, errors by class, mask p50/p99, and how many schemas ``--json-schema-unenforced
reject`` would refuse (``schema_support.unenforced_keywords``).

Part 2 (``--part e2e``): SGLang's json_jump_forward character workload (``--num-prompts``
names, one regex with fixed formatting and ``[\\w\\d\\s]{1,16}`` free-text fields), the 114M
random-weight Llama of ``bench/common.py``, fp32, greedy. Systems, each in a fresh process:
RadixLM ``Engine`` with jump-forward, without it, and transformers ``generate`` (static batches
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
import logging
import os
import random
import re
import time
from multiprocessing import get_context
from multiprocessing.connection import Connection
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

DEFAULT_DATA = "../shared/data/jsonschemabench"
DEFAULT_NAMES = "../shared/data/sglang_benchmark/json_jump_forward/dataset.txt"
TARGETS = {
    "mask_p50_us": 50.0,
    "compile_p50_ms": 100.0,
    "compiled_share": 0.90,
    "jump_speedup": 1.5,
    "hf_speedup": 3.0,
}
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
ERROR_CLASSES = (  # substring of radixlm's GrammarError message -> short class
    ("not a valid JSON Schema", "invalid schema"),
    ("unsupported json_schema: Format", "format unsupported by outlines"),
    ("unsupported json_schema", "structure unsupported by outlines"),
    ("not supported by the outlines grammar engine", "regex unsupported by the engine"),
    ("cannot produce", "characters outside the vocabulary"),
    ("free text at about", "free-text positions over max_transitions"),
    ("unrolls to about", "regex over max_regex_expansion"),
    ("becomes a regex of", "regex over max_regex_chars"),
    ("characters, more than", "schema over max_spec_chars"),
    ("anchor or boundary", "anchor inside the regex"),
)


def pct(values: list[float], q: float) -> float | None:
    """The ``q``-quantile (nearest rank) of ``values``; None if empty."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else None


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "n/a" if v is None else format(v, spec)


def print_table(head: list[str], rows: list[list[Any]]) -> None:
    """Columns as wide as their widest cell; the first left-aligned, the rest right-aligned."""
    cells = [head] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    for n, row in enumerate(cells):
        print(
            " ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
            )
        )
        if n == 0:
            print("-" * (sum(widths) + len(widths) - 1))


# ---- part 1: compile + mask, in a killable worker process -----------------------------------
def _mask_worker(conn: Connection, tokenizer_dir: str, steps: int, seed: int) -> None:
    """Serve (name, schema) tasks: send ("compiled", ms) then ("walk", {...}), or
    ("error", ms, class, message)."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from radixlm.constrained.base import GrammarSpec
    from radixlm.constrained.outlines_backend import OutlinesBackend
    from radixlm.constrained.specs import spec_to_regex

    torch.set_num_threads(1)
    logging.getLogger("radixlm").setLevel(logging.ERROR)  # dropped keywords: counted instead
    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    backend = OutlinesBackend(tok, len(tok), [tok.eos_token_id])
    backend.compile(GrammarSpec("json_schema", '{"type": "integer"}'))  # lazy imports
    eos = np.asarray(backend.eos_token_ids)
    conn.send(("ready",))
    while (task := conn.recv()) is not None:
        name, spec = task[0], GrammarSpec("json_schema", task[1])
        t0 = time.perf_counter()
        try:
            grammar = backend.compile(spec)
        except BaseException as e:  # incl. a Rust panic (pyo3's PanicException)
            msg = str(e)
            cls = next((c for key, c in ERROR_CLASSES if key in msg), msg[:60])
            conn.send(
                ("error", (time.perf_counter() - t0) * 1e3, f"{type(e).__name__}: {cls}", msg[:300])
            )
            continue
        conn.send(("compiled", (time.perf_counter() - t0) * 1e3))
        t0 = time.perf_counter()  # its first half again: schema -> regex (the rest: Index)
        spec_to_regex(spec, backend.limits)
        walk: dict[str, Any] = {k: [] for k in ("step", "new", "cached", "hot")}
        walk.update(end="steps", regex_ms=(time.perf_counter() - t0) * 1e3)
        rng = random.Random(f"{seed}:{name}")
        matcher, mask = grammar.matcher(), backend.allocate_mask(1)
        for _ in range(steps):
            new = backend.mask_cache.get((grammar.key, matcher.state)) is None
            t0 = time.perf_counter_ns()
            matcher.fill_mask(mask, 0)
            t1 = time.perf_counter_ns()
            matcher.fill_mask(mask, 0)
            t2 = time.perf_counter_ns()
            walk["step"].append((t1 - t0) / 1e3)
            walk["new" if new else "cached"].append((t1 - t0) / 1e3)
            walk["hot"].append((t2 - t1) / 1e3)
            # A uniform choice among the allowed tokens using small arrays only (big temporary
            # arrays would evict what the next timed call runs on).
            bits = np.unpackbits(mask[0].numpy().view(np.uint8), bitorder="little")
            bits[eos] = 0
            counts = bits.reshape(-1, 32).sum(axis=1, dtype=np.int64)
            cum = np.cumsum(counts)
            if cum[-1] == 0 or matcher.is_terminated():
                walk["end"] = "complete"
                break
            k = rng.randrange(int(cum[-1]))
            w = int(np.searchsorted(cum, k, side="right"))
            in_word = np.flatnonzero(bits[32 * w : 32 * w + 32])
            tok_id = 32 * w + int(in_word[k - cum[w] + counts[w]])
            if not matcher.advance(tok_id):
                walk["end"] = f"BUG: advance({tok_id}) refused an allowed token"
                break
        conn.send(("walk", walk))


class MaskWorker:
    """One worker process; ``run`` kills and restarts it when a compile outlives the timeout."""

    def __init__(self, *args: Any) -> None:
        self.args = args  # of _mask_worker, after the connection
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        ctx = get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_mask_worker, args=(child, *self.args), daemon=True)
        self.proc.start()
        child.close()
        if not self.conn.poll(300) or self.conn.recv() != ("ready",):
            raise RuntimeError("the mask worker did not start")

    def _restart(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.restarts += 1
        self._start()

    def run(self, name: str, text: str, timeout: float) -> dict[str, Any]:
        self.conn.send((name, text))
        try:
            if not self.conn.poll(timeout):
                self._restart()
                return {"status": "timeout", "compile_ms": timeout * 1e3}
            msg = self.conn.recv()
            if msg[0] == "error":
                return {"status": "error", "compile_ms": msg[1], "error": msg[2], "msg": msg[3]}
            if not self.conn.poll(max(60.0, timeout)):
                self._restart()
                return {"status": "compiled", "compile_ms": msg[1], "regex_ms": None, "walk": None}
            walk = self.conn.recv()[1]
            out = {"status": "compiled", "compile_ms": msg[1], "regex_ms": walk.pop("regex_ms")}
            return {**out, "walk": walk}
        except (EOFError, OSError):  # the worker died (a crash in native code)
            self._restart()
            return {"status": "error", "compile_ms": None, "error": "worker crashed", "msg": ""}

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


def run_masks(args: argparse.Namespace) -> dict[str, Any]:
    from radixlm.constrained.schema_support import unenforced_keywords

    schemas = []
    for split in sorted(p for p in repo_path(args.data).iterdir() if p.is_dir()):
        files = sorted(split.glob("*.json"))
        if not args.all and len(files) > args.max_per_split:
            files = sorted(random.Random(args.seed).sample(files, args.max_per_split))
        schemas += [(split.name, f.name, f.read_text()) for f in files]
    print(
        f"\n== Part 1: {len(schemas)} schemas (1-min load {os.getloadavg()[0]:.2f}) ==", flush=True
    )
    tokenizer = str(repo_path(args.tokenizer))
    worker = MaskWorker(tokenizer, args.walk_steps, args.seed)
    records = []
    t_start = time.perf_counter()
    for n, (split, name, text) in enumerate(schemas, 1):
        try:
            reject = bool(unenforced_keywords(json.loads(text)))
        except ValueError:
            reject = False
        r = worker.run(f"{split}/{name}", text, args.compile_timeout)
        records.append({"split": split, "name": name, "would_reject": reject, **r})
        if n % 50 == 0 or n == len(schemas):
            took, load = time.perf_counter() - t_start, os.getloadavg()[0]
            print(f"  {n}/{len(schemas)} ({took:.0f} s, load {load:.2f})", flush=True)
    worker.close()
    summary = {
        s: summarize([r for r in records if r["split"] == s], args.compile_timeout)
        for s in dict.fromkeys(r["split"] for r in records)
    }
    summary["overall"] = summarize(records, args.compile_timeout)
    return {"records": records, "summary": summary, "worker_restarts": worker.restarts}


def summarize(records: list[dict], timeout_s: float) -> dict[str, Any]:
    ok = [r for r in records if r["status"] == "compiled"]
    errors: dict[str, int] = {}
    for r in records:
        if r["status"] == "error":
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    # Compile times of compiled + timed-out schemas (a timeout counts as the timeout: a bound).
    times = [r["compile_ms"] for r in records if r["status"] in ("compiled", "timeout")]
    walks = [r["walk"] for r in ok if r["walk"]]
    lat = {k: [x for w in walks for x in w[k]] for k in ("step", "new", "cached", "hot")}
    return {
        "schemas": len(records),
        "compiled": len(ok),
        "timeouts": sum(r["status"] == "timeout" for r in records),
        "errors": errors,
        "compiled_share": len(ok) / max(1, len(records)),
        "compile_p50_ms": pct(times, 0.5),
        "compile_p95_ms": pct(times, 0.95),
        "compile_p50_ok_ms": pct([r["compile_ms"] for r in ok], 0.5),
        "regex_share": sum(r["regex_ms"] or 0 for r in ok) / sum(r["compile_ms"] for r in ok)
        if ok
        else None,
        "mask_steps": len(lat["step"]),
        "new_steps": len(lat["new"]),
        **{f"{k}_p{q}_us": pct(v, q / 100) for k, v in lat.items() for q in (50, 99)},
        "would_reject": sum(r["would_reject"] for r in records),
        "would_reject_compiled": sum(r["would_reject"] for r in ok),
        "walk_bugs": [
            f"{r['split']}/{r['name']}: {r['walk']['end']}"
            for r in ok
            if r["walk"] and r["walk"]["end"].startswith("BUG")
        ],
        "walks_lost": sum(not r["walk"] for r in ok),
        "timeout_s": timeout_s,
    }


def mask_targets(o: dict[str, Any]) -> list[tuple[str, float | None, bool]]:
    """(label, value, met) of the part-1 targets, from the overall summary."""
    mask, comp, share = o["step_p50_us"], o["compile_p50_ms"], o["compiled_share"]
    return [
        ("mask p50 <= 50 us", mask, mask is not None and mask <= TARGETS["mask_p50_us"]),
        ("compile p50 <= 100 ms", comp, comp is not None and comp <= TARGETS["compile_p50_ms"]),
        (">= 90 % compiled", share, share >= TARGETS["compiled_share"]),
    ]


def print_masks(res: dict[str, Any]) -> None:
    rows = []
    for split, s in res["summary"].items():
        p95 = fmt(s["compile_p95_ms"])
        if s["compile_p95_ms"] is not None and s["compile_p95_ms"] >= s["timeout_s"] * 1e3:
            p95 = f">={p95}"  # a timeout counts as the timeout
        lat = "|".join(fmt(s[f"{k}_p{q}_us"]) for k in ("step", "new", "cached") for q in (50, 99))
        rows.append(
            f"{split}|{s['schemas']}|{s['compiled_share']:.1%}|{s['timeouts']}|"
            f"{sum(s['errors'].values())}|{fmt(s['compile_p50_ms'])}|{p95}|{lat}|"
            f"{fmt(s['hot_p50_us'])}|{s['would_reject']}".split("|")
        )
    head = "split|n|compiled|t/o|err|compile p50|p95 ms|mask p50|p99 us|new p50|p99|cached p50|p99"
    print()
    print_table(f"{head}|hot p50|reject".split("|"), rows)
    o = res["summary"]["overall"]
    print("errors:", ", ".join(f"{k} x{v}" for k, v in sorted(o["errors"].items())) or "none")
    print(
        f"compile = schema -> regex ({fmt(o['regex_share'], '.0%')} of the time) -> outlines "
        f"Index; p50/p95 over compiled + timed-out schemas, a timeout counting as "
        f"{o['timeout_s']:g} s (p50 of the compiled alone: {fmt(o['compile_p50_ok_ms'])} ms).\n"
        f"mask = fill_mask once per walk step ({o['mask_steps']} steps): new = first visit of "
        f"a state ({o['new_steps']} steps), cached = the rest; hot = the same call repeated.\n"
        f"reject = schemas --json-schema-unenforced reject would refuse "
        f"({o['would_reject_compiled']} of them compiled under ignore). Worker restarts: "
        f"{res['worker_restarts']}; walks lost: {o['walks_lost']}; walk bugs: "
        f"{o['walk_bugs'] or 'none'}"
    )
    for label, value, ok in mask_targets(o):
        print(f"target {label}: {fmt(value, '.4g')} -> {'PASS' if ok else 'FAIL'}")


# ---- part 2: end-to-end JSON decoding (each system in a fresh process) ----------------------
def _timed(fn: Any, sink: list[float]) -> Any:
    """``fn``, appending each call's duration (us) to ``sink``."""

    def wrapper(*a: Any) -> Any:
        t0 = time.perf_counter_ns()
        out = fn(*a)
        sink.append((time.perf_counter_ns() - t0) / 1e3)
        return out

    return wrapper


def run_radixlm(model_dir: str, prompts: list[list[int]], jump: bool, args: dict) -> dict:
    worker_setup(args["threads"], args["log_level"])
    import radixlm
    from radixlm.constrained.outlines_backend import OutlinesMatcher
    from radixlm.scheduler.grammar import GrammarManager

    timings: dict[str, list[float]] = {"row": [], "batch": []}  # fill_mask in the scheduler
    OutlinesMatcher.fill_mask = _timed(OutlinesMatcher.fill_mask, timings["row"])  # type: ignore
    GrammarManager.fill_mask = _timed(GrammarManager.fill_mask, timings["batch"])  # type: ignore
    total = sum(len(p) for p in prompts) + len(prompts) * args["max_new_tokens"] + 1024
    engine = radixlm.Engine(
        model_dir,
        dtype="float32",
        num_threads=args["threads"],
        max_total_tokens=total,
        disable_jump_forward=not jump,
        grammar_compile_timeout=600,
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
        ("radixlm_jump", run_radixlm, (True,)),
        ("radixlm_no_jump", run_radixlm, (False,)),
        ("transformers", run_hf, ()),
    ):
        if name == "transformers" and args.skip_hf:
            continue
        print(f"  {name} ... (1-min load {os.getloadavg()[0]:.2f})", flush=True)
        load = os.getloadavg()[0]
        r = in_subprocess(fn, str(model_dir), prompts, *extra, work)
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
    p.add_argument("--walk-steps", type=int, default=64, help="random-walk tokens per schema")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--names", default=DEFAULT_NAMES, help="SGLang json_jump_forward names")
    p.add_argument("--num-prompts", type=int, default=50)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--hf-batch-size", type=int, default=8, help="static batch size for HF")
    p.add_argument("--skip-hf", action="store_true", help="leave out the transformers system")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (part 2)")
    p.add_argument("--json-out", default=None, help="write every number here as JSON")
    p.add_argument("--log-level", default="warning", help="logging level inside the workers")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    env = environment(args.threads)
    print_header(env, args.threads)
    report: dict[str, Any] = {"environment": env, "args": vars(args), "targets": TARGETS}
    passed: list[bool] = []
    if args.part in ("all", "masks"):
        masks = report["masks"] = run_masks(args)
        print_masks(masks)
        passed += [ok for _, _, ok in mask_targets(masks["summary"]["overall"])]
        for r in masks["records"]:  # per-step lists -> a few numbers per schema in the JSON
            w = r.pop("walk", None) or {}
            r["walk"] = {
                "steps": len(w.get("step", [])),
                "new": len(w.get("new", [])),
                "p50_us": pct(w.get("step", []), 0.5),
                "end": w.get("end"),
            }
    if args.part in ("all", "e2e"):
        report["e2e"] = run_e2e(args)
        passed += print_e2e(report["e2e"])
    print(f"\ntargets passed: {sum(passed)}/{len(passed)}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
