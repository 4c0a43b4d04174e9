"""Part 1 of ``json_decoding.py``: JSON Schema coverage, output validity, compile and mask cost.

A seeded sample of JSONSchemaBench (``--max-per-split`` schemas of each split, the same count per
split), GPT-2 vocabulary, each system of ``--systems`` side by side in one run, schema by schema
(every system sees each schema right after the others, under the same machine load):

- ``auto``, ``llguidance``, ``outlines``, ``xgrammar``: RadixLM's grammar backends as the server
  builds them (``create_backend``, compact JSON, unenforceable keywords dropped and reported);
  the spec is ``GrammarSpec.from_request`` of the schema, as for a request;
- ``llguidance-direct``: llguidance through its own Python API, the external baseline:
  ``LLMatcher.grammar_from_json_schema(schema, overrides=DIRECT_OVERRIDES)`` (llguidance's
  defaults, ``lenient`` off, so unimplemented keywords are errors; only the layout is set to
  RadixLM's compact one), an ``LLTokenizer`` from ``tokenizer.json`` and an ``LLMatcher``.

Each system runs in its own worker process, killed and restarted when a compile outlives
``--compile-timeout`` s. Per schema and system:

- compile = build + load (``llguidance-direct``: grammar + ``LLMatcher`` + its first mask, as
  RadixLM's llguidance build does), in ms. *compiled* / *exact* (compiled, nothing dropped) /
  *dropped* (compiled, keywords dropped and reported) / *refused* (by error class; timeouts,
  ``t/o``, and worker crashes are refused too), all shares of the schemas. p50/p95 are over compiled and timed-out schemas, a timeout counting as the
  timeout (a lower bound).
- ``--walks`` seeded random walks of up to ``--walk-steps`` tokens: each step times one
  ``fill_mask`` (µs), then picks a token uniformly among the allowed non-EOS ones (from step
  ``FREE_STEPS`` on, closing tokens first, then other punctuation, then short ones, so walks
  finish); in a final state it takes EOS with probability 0.3 (always, if nothing else is
  allowed). A walk *finishes* on EOS or a terminated matcher; strings whose ``pattern`` is
  unanchored and demanding rarely finish (they stay *unfinished*, without an output).
- each finished output: *valid* by an independent ``jsonschema`` validation
  (``validator_for(schema)`` with its ``FORMAT_CHECKER``; outputs it cannot check are left out of
  the shares), *flagged* when ``check_output(text)[0] is False`` (the server's
  ``meta_info.constraint.valid``; ``llguidance-direct`` has no flag). An output that is invalid
  and not flagged would be a runtime bug: each is listed.

    python bench/json_decoding_masks.py --json-out bench/results/json_decoding_masks_<date>.json

With ``--json-out``, a plot beside it (``--plot-file``; ``bench/plots.py``): the grammar
compile-time CDF (share of all schemas compiled within t ms) and the mask-cost CDF per system.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
import warnings
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from common import environment, print_header, repo_path
from plots import PLOT_HELP, plot_path, write_plot

SYSTEMS = ("auto", "llguidance", "outlines", "xgrammar", "llguidance-direct")
TARGETS = {
    "compiled_share": 0.97,  # under auto
    "valid_or_flagged_share": 1.0,
    "valid_share": 0.99,
    "compile_p50_ms": 10.0,
    "compile_p95_ms": 100.0,
    "mask_p50_us": 50.0,
}
DIRECT_OVERRIDES = {"whitespace_flexible": False}  # "," and ":" are llguidance's defaults
FREE_STEPS = 60  # walk steps before closing tokens are preferred
EOS_PROB = 0.3
ERROR_CLASSES = (  # substring of the error message -> short class
    ("Unimplemented keys", "unimplemented keywords"),
    ("cannot enforce", "keywords not enforceable"),
    ("not a valid JSON Schema", "invalid schema"),
    ("Unsatisfiable", "unsatisfiable"),
    ("Unknown format", "unknown format"),
    ("does not exist", "unresolvable $ref"),
    ("unsupported json_schema", "structure unsupported"),
    ("not supported by the outlines", "regex unsupported by outlines"),
    ("cannot produce", "characters outside the vocabulary"),
    ("free text at about", "over max_transitions"),
    ("unrolls to about", "over max_regex_expansion"),
    ("becomes a regex of", "over max_regex_chars"),
    ("characters, more than", "over max_spec_chars"),
    ("nests deeper", "nesting too deep"),
    ("cyclic", "cyclic $ref"),
    ("cannot be compiled", "refused by the engine"),
    ("cannot be read", "unreadable by the engine"),
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
        cols = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        print(" ".join(cols))
        if n == 0:
            print("-" * (sum(widths) + len(widths) - 1))


# ---- the systems, inside a worker process ---------------------------------------------------
class _Radix:
    """A RadixLM backend: ``compile(text) -> (grammar, served by, unenforced)``."""

    def __init__(self, name: str, tok: Any, tokenizer_dir: Path) -> None:
        from radixlm.constrained.backends import create_backend
        from radixlm.constrained.base import GrammarSpec

        self.spec = GrammarSpec.from_request
        self.backend = create_backend(name, tok, len(tok), [tok.eos_token_id])
        self.eos, self.mask = list(self.backend.eos_token_ids), self.backend.allocate_mask(1)
        self.token_bytes = self.backend.vocab.token_bytes
        warm = GrammarSpec("json_schema", '{"type": "integer"}')  # lazy imports, tokenizers
        for member in getattr(self.backend, "members", {"": self.backend}).values():
            member.compile(warm).matcher().fill_mask(self.mask, 0)

    def compile(self, text: str) -> tuple[Any, str, list[str]]:
        artifact = self.backend.build(self.spec(None, text))
        return self.backend.load(artifact), artifact.backend, [str(u) for u in artifact.unenforced]

    def flagged(self, grammar: Any, text: str) -> bool | None:
        return grammar.check_output(text)[0] is False

    def decode(self, ids: list[int]) -> bytes:
        return b"".join(self.token_bytes[i] or b"" for i in ids)


class _DirectMatcher:
    def __init__(self, ll: Any) -> None:
        self.ll = ll

    def fill_mask(self, mask: Any, row: int) -> None:
        self.ll.unsafe_compute_mask_ptr(mask[row].data_ptr(), mask.shape[1] * 4)

    def advance(self, token: int) -> bool:
        return self.ll.consume_token(token)

    def is_final(self) -> bool:
        return self.ll.is_accepting()

    def is_terminated(self) -> bool:
        return self.ll.is_stopped()


class _DirectGrammar:
    def __init__(self, prototype: Any) -> None:
        self.prototype = prototype  # an LLMatcher at the initial state, never advanced

    def matcher(self) -> _DirectMatcher:
        return _DirectMatcher(self.prototype.deep_copy())


class _Direct:
    """llguidance's own API (the baseline); its grammar's ``matcher()`` deep-copies a prototype."""

    def __init__(self, name: str, tok: Any, tokenizer_dir: Path) -> None:
        import llguidance
        import torch

        from radixlm.constrained.vocabulary import build_token_vocabulary

        self.llg, self.eos = llguidance, [tok.eos_token_id]
        path = str(tokenizer_dir / "tokenizer.json")
        self.tokenizer = llguidance.LLTokenizer(path, n_vocab=len(tok), eos_token=self.eos)
        self.mask = torch.full((1, (len(tok) + 31) // 32), -1, dtype=torch.int32)
        self.token_bytes = build_token_vocabulary(tok, len(tok), self.eos).token_bytes  # closers
        self.compile('{"type": "integer"}')[0].matcher().fill_mask(self.mask, 0)

    def compile(self, text: str) -> tuple[Any, str, list[str]]:
        grammar = self.llg.LLMatcher.grammar_from_json_schema(text, overrides=DIRECT_OVERRIDES)
        ll = self.llg.LLMatcher(self.tokenizer, grammar, log_level=0)
        if not ll.is_error():
            ll.compute_bitmask()
        if ll.is_error():
            raise ValueError(ll.get_error())
        return _DirectGrammar(ll), "", []

    def flagged(self, grammar: Any, text: str) -> bool | None:
        return None

    def decode(self, ids: list[int]) -> bytes:
        return self.tokenizer.decode_bytes(ids)


def _packed(flags: list[bool]) -> Any:
    return np.packbits(np.array(flags, dtype=bool), bitorder="little").view("<u4")


def _pick(words: Any, prefs: list[Any], rng: random.Random) -> int | None:
    """A uniform choice among the set bits of ``words & pref`` for the first ``pref`` that
    leaves any (None if none does)."""
    for pref in prefs:
        cand = words & pref
        counts = np.bitwise_count(cand)
        cum = np.cumsum(counts, dtype=np.int64)
        if cum[-1]:
            k = rng.randrange(int(cum[-1]))
            w = int(np.searchsorted(cum, k, side="right"))
            bits = [j for j in range(32) if int(cand[w]) >> j & 1]
            return 32 * w + bits[k - int(cum[w] - counts[w])]
    return None


def _walk(system: Any, grammar: Any, steps: int, rng: random.Random, prefs: list) -> dict:
    from time import perf_counter_ns

    matcher, mask, ids, times = grammar.matcher(), system.mask, [], []
    end = "unfinished"
    for step in range(steps):
        t0 = perf_counter_ns()
        matcher.fill_mask(mask, 0)
        times.append((perf_counter_ns() - t0) / 1e3)
        if matcher.is_terminated():
            end = "terminated"
            break
        words = mask[0].numpy().view("<u4") & prefs[0]  # without EOS
        if matcher.is_final() and (not words.any() or rng.random() < EOS_PROB):
            end = "eos" if matcher.advance(system.eos[0]) else "BUG: EOS refused in a final state"
            break
        pick = _pick(words, prefs[1:] if step >= FREE_STEPS else prefs[-1:], rng)
        if pick is None:
            end = "BUG: nothing allowed in a state that is not final"
            break
        if not matcher.advance(pick):
            end = f"BUG: advance({pick}) refused an allowed token"
            break
        ids.append(pick)
    return {"end": end, "steps": len(times), "mask_us": times, "ids": ids}


def _check(validator: Any, text: str) -> bool | None:
    """Independent validation of one output; None if ``jsonschema`` cannot check it."""
    if validator is None:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return False
    try:
        return bool(validator.is_valid(value))
    except Exception:  # noqa: BLE001 (a schema jsonschema cannot evaluate)
        return None


def _worker(
    conn: Connection, tokenizer_dir: str, system_name: str, steps: int, walks: int, seed: int
) -> None:
    """Serve (key, schema text) tasks: send ("compiled", ms, served, unenforced) then
    ("walks", [...]), or ("refused", ms, class, message)."""
    import torch
    from jsonschema.validators import validator_for
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    logging.getLogger("radixlm").setLevel(logging.ERROR)  # dropped keywords: counted instead
    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    try:
        cls = _Direct if system_name == "llguidance-direct" else _Radix
        system = cls(system_name, tok, Path(tokenizer_dir))
    except Exception as e:  # noqa: BLE001 (e.g. xgrammar not installed or not ready)
        conn.send(("unavailable", f"{type(e).__name__}: {e}"[:300]))
        return
    # prefs[0]: every real token (no EOS); then, to finish a walk: closers, other punctuation
    # (a "," ends a number), short tokens that open nothing, anything.
    tb = system.token_bytes + [None] * (32 * system.mask.shape[1] - len(system.token_bytes))
    real = [bool(b) and i not in system.eos for i, b in enumerate(tb)]
    prefs = [_packed(real)] + [
        _packed([bool(b) and test(b) for b in tb])
        for test in (
            lambda b: set(b) <= set(b'"}]'),
            lambda b: set(b) <= set(b'",:}]'),
            lambda b: len(b) <= 2 and not set(b) & set(b",[{"),
            lambda b: True,
        )
    ]
    conn.send(("ready",))
    while (task := conn.recv()) is not None:
        key, text = task
        t0 = time.perf_counter()
        try:
            grammar, served, unenforced = system.compile(text)
        except BaseException as e:  # incl. a Rust panic (pyo3's PanicException)
            msg = str(e).strip().split("\n")[0]
            short_cls = next((c for k, c in ERROR_CLASSES if k in msg), msg[:60])
            ms = (time.perf_counter() - t0) * 1e3
            conn.send(("refused", ms, f"{type(e).__name__}: {short_cls}", msg[:300]))
            continue
        conn.send(("compiled", (time.perf_counter() - t0) * 1e3, served, unenforced))
        try:
            schema = json.loads(text)
            vcls = validator_for(schema)
            validator = vcls(schema, format_checker=vcls.FORMAT_CHECKER)
        except Exception:  # noqa: BLE001
            validator = None
        out = []
        for n in range(walks):
            w = _walk(system, grammar, steps, random.Random(f"{seed}:{key}:{n}"), prefs)
            data = system.decode(w.pop("ids"))
            if w["end"] in ("eos", "terminated"):
                out_text = data.decode("utf-8", errors="replace")
                valid = _check(validator, out_text)
                if valid and out_text.encode() != data:
                    valid = False  # not UTF-8
                w.update(valid=valid, flagged=system.flagged(grammar, out_text))
                w["text"] = out_text if not valid or w["flagged"] else None
            out.append(w)
        conn.send(("walks", out))


class MaskWorker:
    """One system's worker process; ``run`` kills and restarts it when it outlives a timeout."""

    def __init__(self, *args: Any) -> None:
        self.args = args  # of _worker, after the connection
        self.restarts = 0
        self.unavailable: str | None = None
        self._start()

    def _start(self) -> None:
        ctx = get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, *self.args), daemon=True)
        self.proc.start()
        child.close()
        msg = self.conn.recv() if self.conn.poll(300) else ("unavailable", "no start in 300 s")
        if msg[0] != "ready":
            self.unavailable = msg[1]
            self.close()

    def _restart(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.restarts += 1
        self._start()

    def run(self, key: str, text: str, timeout: float) -> dict[str, Any]:
        try:
            self.conn.send((key, text))
            if not self.conn.poll(timeout):
                self._restart()
                return {"status": "refused", "compile_ms": timeout * 1e3, "error": "timeout"}
            msg = self.conn.recv()
            if msg[0] == "refused":
                return {"status": "refused", "compile_ms": msg[1], "error": msg[2], "msg": msg[3]}
            out = dict(status="compiled", compile_ms=msg[1], served=msg[2], unenforced=msg[3])
            if not self.conn.poll(timeout + 60):
                self._restart()
                return {**out, "walks": [{"end": "walk timeout", "steps": 0, "mask_us": []}]}
            return {**out, "walks": self.conn.recv()[1]}
        except (EOFError, OSError):  # the worker died (a crash in native code)
            self._restart()
            return {"status": "refused", "compile_ms": None, "error": "worker crashed"}

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


# ---- the run --------------------------------------------------------------------------------
def load_schemas(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(split, file name, text): a seeded sample of ``--max-per-split`` of each split, or as many
    as the smallest split has (every schema with ``--all``)."""
    root = repo_path(args.data)
    if not root.is_dir() or not any(p.is_dir() for p in root.iterdir()):
        raise SystemExit(f"error: --data {root} is not a JSONSchemaBench dir (one dir per split)")
    splits = {p.name: sorted(p.glob("*.json")) for p in sorted(root.iterdir()) if p.is_dir()}
    count = min(args.max_per_split, *map(len, splits.values()))
    schemas = []
    for split, files in splits.items():
        if not args.all:
            files = sorted(random.Random(args.seed).sample(files, count))
        schemas += [(split, f.name, f.read_text()) for f in files]
    return schemas


def run_masks(
    args: argparse.Namespace, systems: list[str], schemas: list[tuple[str, str, str]]
) -> dict[str, dict[str, Any]]:
    """Every schema on every system (interleaved): ``{system: {records, summary, ...}}``;
    systems that cannot start are left out (reported)."""
    walks, steps = getattr(args, "walks", 2), args.walk_steps
    print(
        f"\n== Part 1: {len(schemas)} schemas x {systems}, {walks} walks of <= {steps} tokens"
        f" (1-min load {os.getloadavg()[0]:.2f}) ==",
        flush=True,
    )
    tokenizer, workers = str(repo_path(args.tokenizer)), {}
    for name in systems:
        worker = MaskWorker(tokenizer, name, steps, walks, args.seed)
        if worker.unavailable:
            print(f"  {name}: unavailable, left out ({worker.unavailable})", flush=True)
        else:
            workers[name] = worker
    records: dict[str, list[dict]] = {name: [] for name in workers}
    t_start = time.perf_counter()
    for n, (split, name, text) in enumerate(schemas, 1):
        for system, worker in workers.items():
            r = worker.run(f"{split}/{name}", text, args.compile_timeout)
            records[system].append({"split": split, "name": name, **r})
        if n % 50 == 0 or n == len(schemas):
            took, load = time.perf_counter() - t_start, os.getloadavg()[0]
            print(f"  {n}/{len(schemas)} ({took:.0f} s, load {load:.2f})", flush=True)
    results = {}
    for system, worker in workers.items():
        worker.close()
        summary = summarize(system, records[system], args.compile_timeout)
        for r in records[system]:  # per-step lists -> a few numbers per walk
            for w in r.get("walks", []):
                w["mask_p50_us"] = pct(w.pop("mask_us"), 0.5)
        results[system] = {
            "summary": summary,
            "records": records[system],
            "worker_restarts": worker.restarts,
        }
    return results


def summarize(system: str, records: list[dict], timeout_s: float) -> dict[str, Any]:
    ok = [r for r in records if r["status"] == "compiled"]
    refused: dict[str, int] = {}
    for r in records:
        if r["status"] == "refused":
            refused[r["error"]] = refused.get(r["error"], 0) + 1
    timed = [r for r in records if r["status"] == "compiled" or r["error"] == "timeout"]
    times = [r["compile_ms"] for r in timed]
    walks = [(r, w) for r in ok for w in r["walks"]]
    done = [(r, w) for r, w in walks if w["end"] in ("eos", "terminated")]
    checked = [(r, w) for r, w in done if w["valid"] is not None]
    mask_us = [x for _, w in walks for x in w["mask_us"]]
    n, k = max(1, len(records)), max(1, len(checked))
    valid = sum(w["valid"] for _, w in checked)
    flagged = sum(bool(w["flagged"]) for _, w in done)
    valid_or_flagged = sum(w["valid"] or bool(w["flagged"]) for _, w in checked)
    slowest = sorted(records, key=lambda r: -(r["compile_ms"] or 0))[:5]
    return {
        "system": system,
        "schemas": len(records),
        "compiled": len(ok),
        "compiled_share": len(ok) / n,
        "exact_share": sum(not r["unenforced"] for r in ok) / n,
        "dropped_share": sum(bool(r["unenforced"]) for r in ok) / n,
        "refused": refused,
        "timeouts": refused.get("timeout", 0),
        "served_by": {b: sum(r["served"] == b for r in ok) for b in {r["served"] for r in ok}},
        "walks": len(walks),
        "finished": len(done),
        "unfinished": sum(w["end"] == "unfinished" for _, w in walks),
        "walk_bugs": [
            f"{r['split']}/{r['name']}: {w['end']}"
            for r, w in walks
            if w["end"] not in ("eos", "terminated", "unfinished")
        ],
        "unchecked": len(done) - len(checked),
        "valid_share": valid / k if checked else None,
        "flagged_share": None if system == "llguidance-direct" else flagged / max(1, len(done)),
        "valid_or_flagged_share": valid_or_flagged / k if checked else None,
        "invalid_unflagged": [
            {"schema": f"{r['split']}/{r['name']}", "text": w["text"]}
            for r, w in checked
            if not w["valid"] and not w["flagged"]
        ],
        "compile_p50_ms": pct(times, 0.5),
        "compile_p95_ms": pct(times, 0.95),
        "mask_steps": len(mask_us),
        "mask_p50_us": pct(mask_us, 0.5),
        "mask_p99_us": pct(mask_us, 0.99),
        "slowest": [
            (f"{r['split']}/{r['name']}", r["compile_ms"], r.get("error") or "compiled")
            for r in slowest
        ],
        "timeout_s": timeout_s,
    }


# ---- reporting ------------------------------------------------------------------------------
def mask_targets(o: dict[str, Any]) -> list[tuple[str, float | None, bool]]:
    """(label, value, met) of the part-1 targets, from a system's summary."""
    t = TARGETS
    rows = [
        (">= 97 % compiled", o["compiled_share"], t["compiled_share"], 1),
        ("100 % valid or flagged", o["valid_or_flagged_share"], t["valid_or_flagged_share"], 1),
        (">= 99 % valid", o["valid_share"], t["valid_share"], 1),
        ("compile p50 <= 10 ms", o["compile_p50_ms"], t["compile_p50_ms"], -1),
        ("compile p95 <= 100 ms", o["compile_p95_ms"], t["compile_p95_ms"], -1),
        ("mask p50 <= 50 us", o["mask_p50_us"], t["mask_p50_us"], -1),
    ]
    return [(label, v, v is not None and (v - goal) * sign >= 0) for label, v, goal, sign in rows]


def print_masks(system: str, res: dict[str, Any]) -> None:
    """A system's details: refusals, which backend served, walks, bad outputs, slowest schemas."""
    o = res["summary"]
    print(f"\n[{system}] {o['schemas']} schemas, worker restarts {res['worker_restarts']}")
    print("  refused:", ", ".join(f"{k} x{v}" for k, v in sorted(o["refused"].items())) or "none")
    if system == "auto":
        print("  served by:", ", ".join(f"{k} {v}" for k, v in o["served_by"].items()))
    print(
        f"  walks: {o['walks']}, finished {o['finished']} ({o['unfinished']} unfinished, "
        f"{o['unchecked']} not checkable by jsonschema); {o['mask_steps']} mask steps"
    )
    print(f"  walk bugs: {o['walk_bugs'] or 'none'}")
    bad = o["invalid_unflagged"]
    kind = "invalid outputs (no flag)" if system == "llguidance-direct" else "UNFLAGGED INVALID"
    print(f"  {kind}: {len(bad)}")
    for b in bad[:10]:
        print(f"    {b['schema']}: {b['text'][:200]!r}")
    slowest = (f"{s} {fmt(ms, '.0f')} ms ({what})" for s, ms, what in o["slowest"])
    print("  slowest compiles:", "; ".join(slowest))


def print_comparison(results: dict[str, dict[str, Any]]) -> None:
    """One row per system, then the targets side by side."""
    rows = []
    for system, res in results.items():
        o = res["summary"]
        bad = "-" if system == "llguidance-direct" else len(o["invalid_unflagged"])
        rows.append(
            f"{system}|{o['compiled_share']:.1%}|{o['exact_share']:.1%}|{o['dropped_share']:.1%}|"
            f"{o['schemas'] - o['compiled']}|{o['timeouts']}|{fmt(o['valid_share'], '.1%')}|"
            f"{fmt(o['flagged_share'], '.1%')}|{bad}|{fmt(o['compile_p50_ms'])}|"
            f"{fmt(o['compile_p95_ms'])}|{fmt(o['mask_p50_us'])}|{fmt(o['mask_p99_us'])}".split("|")
        )
    head = (
        "system|compiled|exact|dropped|refused|t/o|valid|flagged|unflagged-invalid|"
        "compile p50 ms|p95 ms|mask p50 us|p99 us"
    )
    print("\n== Part 1 side by side (valid/flagged: shares of finished walks) ==")
    print_table(head.split("|"), rows)
    names = list(results)
    table = [[label] for label, _, _ in mask_targets(results[names[0]]["summary"])]
    for system in names:
        for row, (label, v, ok) in zip(table, mask_targets(results[system]["summary"])):
            value = fmt(v, ".1%") if "%" in label else fmt(v)
            row.append(f"{value} {'PASS' if ok else 'FAIL'}")
    print("\ntargets (the compiled share is auto's target; the others are shown for comparison)")
    print_table(["target", *names], table)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", default="../shared/data/jsonschemabench", help="one dir per split")
    p.add_argument("--tokenizer", default="tests/fixtures/gpt2", help="relative to the repo root")
    p.add_argument("--max-per-split", type=int, default=100, help="seeded sample per split")
    p.add_argument("--all", action="store_true", help="every schema (overrides --max-per-split)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"of {', '.join(SYSTEMS)}")
    p.add_argument("--compile-timeout", type=float, default=30.0, help="seconds per schema")
    p.add_argument("--walks", type=int, default=2, help="random walks per compiled schema")
    p.add_argument("--walk-steps", type=int, default=400, help="tokens per walk at most")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", default=None, help="write every number here as JSON")
    p.add_argument("--plot-file", default=None, help=PLOT_HELP)
    args = p.parse_args()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not systems or set(systems) - set(SYSTEMS):
        p.error(f"--systems: choose from {', '.join(SYSTEMS)}")
    env = environment(1)
    print_header(env, 1)
    results = run_masks(args, systems, load_schemas(args))
    for system, res in results.items():
        print_masks(system, res)
    print_comparison(results)
    report = {"environment": env, "args": vars(args), "targets": TARGETS, "masks": results}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json_out}")
    write_plot("json_decoding", report, plot_path(args.plot_file, args.json_out))


if __name__ == "__main__":
    main()
