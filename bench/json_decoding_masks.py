"""Part 1 of ``json_decoding.py``: grammar compile time, mask cost and coverage per backend.

GPT-2 vocabulary, a seeded sample of the JSONSchemaBench splits. For each grammar backend
(``outlines``, ``llguidance``, ``auto``) every schema is compiled (kind ``json_schema``, default
whitespace, unenforced keywords ignored as the server does by default) in a worker process that
is killed and restarted after ``--compile-timeout`` s. A compiled grammar then takes a seeded
random walk of up to ``--walk-steps`` tokens, each uniform among the allowed ones, timing
``fill_mask`` once per step and again at once ("hot"). For outlines-core grammars the steps are
split into "new" (the state's first visit: the backend builds its row) and "cached" (its LRU
holds the row); llguidance computes every mask on demand. ``auto`` runs outlines-core first and
hands a schema to llguidance when outlines refuses it or takes over its budget; the abandoned
outlines compile keeps running, so before the next schema the worker waits for it (not timed)
or, past the timeout, is restarted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
from multiprocessing import get_context
from multiprocessing.connection import Connection
from typing import Any

from common import repo_path

TARGETS = {"mask_p50_us": 50.0, "compile_p50_ms": 100.0, "compiled_share": 0.90}
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
    ("property names with quotes", "property name needs escaping"),
    ("Unsatisfiable schema", "unsatisfiable (llguidance)"),
    ("cannot be compiled", "refused by llguidance"),
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


# ---- the worker process ---------------------------------------------------------------------
def _mask_worker(
    conn: Connection, tokenizer_dir: str, backend_name: str, steps: int, seed: int, drain_s: float
) -> None:
    """Serve (name, schema) tasks: send ("compiled", ms, engine) then ("walk", {...}, idle), or
    ("error", ms, class, message)."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from radixlm.constrained.backends import create_backend
    from radixlm.constrained.base import GrammarSpec
    from radixlm.constrained.outlines_backend import OutlinesGrammar
    from radixlm.constrained.specs import spec_to_regex

    torch.set_num_threads(1)
    logging.getLogger("radixlm").setLevel(logging.ERROR)  # dropped keywords: counted instead
    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    backend = create_backend(backend_name, tok, len(tok), [tok.eos_token_id])
    warm = backend.compile(GrammarSpec("json_schema", '{"type": "integer"}'))  # lazy imports
    warm.matcher().fill_mask(backend.allocate_mask(1), 0)  # llguidance: builds its tokenizer
    if backend_name == "auto":  # and both engines of auto
        backend.compile(GrammarSpec("ebnf", 'start: "x"')).matcher()
    eos = np.asarray([tok.eos_token_id])
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
            idle = backend.wait_idle(drain_s) if hasattr(backend, "wait_idle") else True
            conn.send(("drained", idle))
            continue
        outlines = isinstance(grammar, OutlinesGrammar)
        engine = "outlines" if outlines else "llguidance"
        conn.send(("compiled", (time.perf_counter() - t0) * 1e3, engine))
        walk: dict[str, Any] = {k: [] for k in ("step", "new", "cached", "hot")}
        walk.update(end="steps", regex_ms=None)
        if outlines:  # its first half again: schema -> regex (the rest: Index)
            t0 = time.perf_counter()
            spec_to_regex(spec, grammar.backend.limits)
            walk["regex_ms"] = (time.perf_counter() - t0) * 1e3
        rng = random.Random(f"{seed}:{name}")
        matcher, mask = grammar.matcher(), backend.allocate_mask(1)
        for _ in range(steps):
            if outlines:
                new = grammar.backend.mask_cache.get((grammar.key, matcher.state)) is None
            t0 = time.perf_counter_ns()
            matcher.fill_mask(mask, 0)
            t1 = time.perf_counter_ns()
            matcher.fill_mask(mask, 0)
            t2 = time.perf_counter_ns()
            walk["step"].append((t1 - t0) / 1e3)
            if outlines:
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
        idle = backend.wait_idle(drain_s) if hasattr(backend, "wait_idle") else True
        conn.send(("walk", walk, idle))


class MaskWorker:
    """One worker process; ``run`` kills and restarts it when a compile outlives the timeout
    (or, for ``auto``, when an abandoned compile outlives it after the walk)."""

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
                if not self.conn.poll(timeout + 60) or not self.conn.recv()[1]:
                    self._restart()  # an abandoned compile is still running
                return {"status": "error", "compile_ms": msg[1], "error": msg[2], "msg": msg[3]}
            out = {"status": "compiled", "compile_ms": msg[1], "engine": msg[2]}
            if not self.conn.poll(timeout + 60):
                self._restart()
                return {**out, "regex_ms": None, "walk": None}
            _, walk, idle = self.conn.recv()
            if not idle:
                self._restart()
            return {**out, "regex_ms": walk.pop("regex_ms"), "walk": walk}
        except (EOFError, OSError):  # the worker died (a crash in native code)
            self._restart()
            return {"status": "error", "compile_ms": None, "error": "worker crashed", "msg": ""}

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


def load_schemas(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    schemas = []
    for split in sorted(p for p in repo_path(args.data).iterdir() if p.is_dir()):
        files = sorted(split.glob("*.json"))
        if not args.all and len(files) > args.max_per_split:
            files = sorted(random.Random(args.seed).sample(files, args.max_per_split))
        schemas += [(split.name, f.name, f.read_text()) for f in files]
    return schemas


def run_masks(args: argparse.Namespace, backend: str, schemas: list) -> dict[str, Any]:
    from radixlm.constrained.schema_support import unenforced_keywords

    load = os.getloadavg()[0]
    print(f"\n== Part 1 [{backend}]: {len(schemas)} schemas (1-min load {load:.2f}) ==", flush=True)
    tokenizer = str(repo_path(args.tokenizer))
    worker = MaskWorker(tokenizer, backend, args.walk_steps, args.seed, args.compile_timeout)
    records = []
    t_start = time.perf_counter()
    for n, (split, name, text) in enumerate(schemas, 1):
        try:
            reject = bool(unenforced_keywords(json.loads(text)))
        except ValueError:
            reject = False
        r = worker.run(f"{split}/{name}", text, args.compile_timeout)
        records.append({"split": split, "name": name, "would_reject": reject, **r})
        if n % 100 == 0 or n == len(schemas):
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
    with_regex = [r for r in ok if r.get("regex_ms") is not None]
    return {
        "schemas": len(records),
        "compiled": len(ok),
        "by_engine": {e: sum(r.get("engine") == e for r in ok) for e in ("outlines", "llguidance")},
        "timeouts": sum(r["status"] == "timeout" for r in records),
        "errors": errors,
        "compiled_share": len(ok) / max(1, len(records)),
        "compile_p50_ms": pct(times, 0.5),
        "compile_p95_ms": pct(times, 0.95),
        "compile_p50_ok_ms": pct([r["compile_ms"] for r in ok], 0.5),
        "regex_share": sum(r["regex_ms"] for r in with_regex)
        / sum(r["compile_ms"] for r in with_regex)
        if with_regex
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


def print_masks(backend: str, res: dict[str, Any]) -> None:
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
    print(f"\n[{backend}]")
    print_table(f"{head}|hot p50|reject".split("|"), rows)
    o = res["summary"]["overall"]
    print("errors:", ", ".join(f"{k} x{v}" for k, v in sorted(o["errors"].items())) or "none")
    engines = ", ".join(f"{e} {n}" for e, n in o["by_engine"].items() if n)
    print(
        f"compiled by: {engines or 'none'}; schema -> regex: {fmt(o['regex_share'], '.0%')} of "
        f"the outlines compile time; p50/p95 over compiled + timed-out schemas, a timeout "
        f"counting as {o['timeout_s']:g} s (p50 of the compiled alone: "
        f"{fmt(o['compile_p50_ok_ms'])} ms).\n"
        f"mask = fill_mask once per walk step ({o['mask_steps']} steps): new = first visit of "
        f"an outlines state ({o['new_steps']} steps), cached = the rest; hot = the same call "
        f"repeated. reject = schemas --json-schema-unenforced reject would refuse on outlines "
        f"({o['would_reject_compiled']} of them compiled). Worker restarts: "
        f"{res['worker_restarts']}; walks lost: {o['walks_lost']}; walk bugs: "
        f"{o['walk_bugs'] or 'none'}"
    )
    for label, value, ok in mask_targets(o):
        print(f"target {label}: {fmt(value, '.4g')} -> {'PASS' if ok else 'FAIL'}")


def print_comparison(results: dict[str, dict[str, Any]]) -> None:
    """One row per backend: the overall numbers next to the targets."""
    rows = []
    for backend, res in results.items():
        o = res["summary"]["overall"]
        passed = sum(ok for _, _, ok in mask_targets(o))
        rows.append(
            [
                backend,
                f"{o['compiled_share']:.1%}",
                o["timeouts"],
                sum(o["errors"].values()),
                fmt(o["compile_p50_ms"]),
                fmt(o["compile_p95_ms"]),
                fmt(o["step_p50_us"]),
                fmt(o["step_p99_us"]),
                fmt(o["hot_p50_us"]),
                f"{passed}/3",
            ]
        )
    head = "backend|compiled|t/o|err|compile p50 ms|p95 ms|mask p50 us|p99 us|hot p50|targets"
    print("\n== Part 1 side by side (targets: compile p50 <= 100 ms, >= 90 % compiled, mask p50 "
          "<= 50 us) ==")  # fmt: skip
    print_table(head.split("|"), rows)
