"""Plots of the benchmarks' results, each drawn from the result dict its benchmark writes as JSON.

``plot_<benchmark>(result, path)`` takes the parsed JSON of one run (the dict the script writes)
and writes one PNG, so a plot can be made again from a committed result without re-running the
benchmark. The benchmark is recognised by the JSON's content (``--kind`` forces one):

    python bench/plots.py bench/results/prefix_sharing_2026-12-07_native.json [more.json ...]
    # writes bench/results/prefix_sharing_2026-12-07_native.png beside each JSON

=====================  =========================================================================
offline_throughput     output tok/s per dtype, RadixLM vs transformers; peak RSS against weights+KV
prefix_sharing         requests/s per workload and system (every round a dot); prefix-cache hit rate
serving                output tok/s against max concurrency; TTFT and ITL CDFs per server and level
programs               programs/s per program and system (every round a dot); prefix-cache hit rate
json_decoding          grammar compile-time CDF and mask-cost CDF per system; end-to-end req/s,
                       jump-forward on vs off per workload and backend (every pass a dot)
quantization           decode ms per step at batch 1 and 8; prompt-logprob drift; greedy agreement
gpu                    output tok/s against concurrency (overlap on and off); batch-1 decode
                       against the roofline; shared prefix, radix cache on vs off
=====================  =========================================================================

The scripts call ``write_plot`` right after writing their JSON, with the same dict; each has a
``--plot-file`` option (default: the JSON path with ``.png``; ``--plot-file ''`` writes none).
Where a run holds several passes or rounds, each bar is the value the script reports (the median
pass or round) and each pass a black dot: the benchmark machine is shared and noisy, so the
spread is part of the result. Needs matplotlib (``pip install
-e .[bench]``); without it the scripts print a note and write no plot. ``agents.py``,
``cpu_kernels.py``, ``soak.py`` and ``vs_llamacpp.py`` draw their own plots.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

PLOT_HELP = "PNG plot of the result (bench/plots.py); default: the JSON path with .png; '' for none"
DPI = 120


# ---- helpers ----------------------------------------------------------------------------------
def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed); ImportError names the extra."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("matplotlib is not installed (pip install -e .[bench])") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    print(f"wrote {path}", flush=True)


def _stamp(result: dict) -> str:
    """``date, commit, N threads`` of the run, for titles."""
    env = result.get("environment") or result.get("env") or {}
    parts = [str(env.get("date", ""))[:10], str(env.get("git_commit", ""))[:7]]
    if env.get("threads"):
        parts.append(f"{env['threads']} threads")
    return ", ".join(p for p in parts if p)


def _rounds(args: dict) -> str:
    n = args.get("repeats", 1)
    return f"{n} round{'s' if n != 1 else ''}"


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _median(values: list[float]) -> float:
    values = [v for v in values if v is not None and v == v]
    return statistics.median(values) if values else math.nan


def bars(
    ax: Any,
    groups: list[str],
    series: dict[str, list[Any]],
    *,
    fmt: str = ".2f",
    log: bool = False,
    rotation: float = 0,
) -> None:
    """Grouped bars: one group per x label, one bar per series, every pass a black dot when
    there are several, the bar's value written above it. ``series[name][i]`` is group ``i``'s
    passes (the bar at their median), or ``(bar value, passes)`` where the script reports its own
    pick (e.g. the median round by wall time), or None / [] for no bar."""
    n = max(1, len(series))
    width = 0.8 / n
    dots = False
    for j, (name, per_group) in enumerate(series.items()):
        xs = [i + (j - (n - 1) / 2) * width for i in range(len(groups))]
        pairs = [
            v if isinstance(v, tuple) else (_median(v) if v else math.nan, v or [])
            for v in per_group
        ]
        heights = [_num(h) for h, _ in pairs]
        drawn = ax.bar(xs, heights, width, label=name)
        labels = ["" if h != h else format(h, fmt) for h in heights]
        ax.bar_label(drawn, labels=labels, fontsize=6, padding=1)
        for x, (_, v) in zip(xs, pairs):
            if len(v) > 1:
                ax.plot([x] * len(v), v, "k.", markersize=3, zorder=3)
                dots = True
    if dots:
        ax.plot([], [], "k.", markersize=3, label="each pass")
    if log:
        _log_axis(ax, "y")
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * (hi / lo) ** 0.25)  # room for the labels and the legend
    else:
        ax.set_ylim(top=ax.get_ylim()[1] * 1.25)
    ha = "right" if rotation else "center"
    ax.set_xticks(range(len(groups)), groups, rotation=rotation, ha=ha, fontsize=7)
    ax.legend(fontsize=7)


def _log_axis(ax: Any, which: str) -> None:
    """A log axis with plain numbers (2, 5, 10, 20), not powers of ten; call it after drawing."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    lo, hi = ax.get_ylim() if which == "y" else ax.get_xlim()
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 1
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5) if decades < 3 else (1,)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def cdf(ax: Any, values: list[float], label: str, total: int | None = None, **kw: Any) -> None:
    """Empirical CDF: the share of ``total`` (default: the sample count) at or below x."""
    xs = sorted(v for v in values if v is not None)
    n = total or len(xs)
    if not xs or not n:
        return
    ax.step(xs, [(i + 1) / n for i in range(len(xs))], where="post", label=label, **kw)


# ---- offline_throughput.py --------------------------------------------------------------------
def plot_offline_throughput(result: dict, path: Path) -> None:
    plt = _pyplot()
    runs = result["runs"]
    dtypes = [r["dtype"] for r in runs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
    bars(
        a,
        dtypes,
        {
            "RadixLM Engine": [[r["radixlm"]["output_tok_s"]] for r in runs],
            "transformers generate": [[r["transformers"]["output_tok_s"]] for r in runs],
        },
        fmt=".1f",
    )
    a.set_ylabel("output tok/s")
    speedups = ", ".join(
        f"{r['dtype']} {r['radixlm']['output_tok_s'] / r['transformers']['output_tok_s']:.2f}x"
        for r in runs
    )
    a.set_title(f"throughput, RadixLM / transformers: {speedups}", fontsize=8)
    bars(
        b,
        dtypes,
        {
            "RadixLM peak RSS": [[r["radixlm"]["peak_rss_mb"]] for r in runs],
            "transformers peak RSS": [[r["transformers"]["peak_rss_mb"]] for r in runs],
            "RadixLM weights + KV pool": [[r["radixlm"].get("static_mb")] for r in runs],
        },
        fmt=".0f",
    )
    limit = (result.get("targets") or {}).get("rss_ratio_max", 1.5)
    for i, r in enumerate(runs):
        if r["radixlm"].get("static_mb"):
            label = f"target: {limit} x weights+KV" if i == 0 else None
            b.hlines(
                limit * r["radixlm"]["static_mb"],
                i - 0.4,
                i + 0.4,
                colors="gray",
                linestyles="--",
                label=label,
            )
    b.legend(fontsize=7)
    b.set_ylabel("MB")
    b.set_title("peak RSS (each system in its own process)", fontsize=8)
    w = result.get("workload", {})
    fig.suptitle(
        f"offline_throughput.py: {w.get('num_prompts', '?')} ShareGPT prompts x "
        f"{(result.get('args') or {}).get('output_len', '?')} greedy tokens, one run "
        f"({_stamp(result)})",
        fontsize=9,
    )
    _save(fig, path)


# ---- prefix_sharing.py ------------------------------------------------------------------------
PREFIX_SYSTEMS = {
    "lpm": "cache, lpm",
    "fcfs": "cache, fcfs",
    "off": "cache off",
    "hf": "transformers",
}


def plot_prefix_sharing(result: dict, path: Path) -> None:
    plt = _pyplot()
    runs = result["runs"]
    shape = result.get("workloads") or {}
    workloads = list(shape) or list(next(iter(runs.values()))["workloads"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))

    def passes(system: str, w: str) -> tuple[float, list[float]] | None:
        r = runs[system]["workloads"].get(w)
        if r is None:
            return None
        return r["req_s"], [r["requests"] / s for s in r.get("walls_s") or [r["wall_s"]]]

    def hit(system: str, w: str) -> list[float] | None:
        r = runs[system]["workloads"].get(w)
        return None if r is None or r.get("hit_rate") is None else [r["hit_rate"]]

    names = {s: PREFIX_SYSTEMS.get(s, s) for s in runs}
    bars(a, workloads, {names[s]: [passes(s, w) for w in workloads] for s in runs}, log=True)
    a.set_ylabel("requests/s (log)")
    a.set_title("throughput: the median round (dots: every round)", fontsize=8)
    bars(b, workloads, {names[s]: [hit(s, w) for w in workloads] for s in runs}, fmt=".0%")
    first = True
    for i, w in enumerate(workloads):  # the trie bound holds for single-turn workloads only
        s = shape.get(w) or {}
        measured = [
            r["workloads"][w]["prompt_tokens"] for r in runs.values() if w in r["workloads"]
        ]
        if s.get("turn1_prompt_tokens") and measured and measured[0] == s["turn1_prompt_tokens"]:
            best = 1 - s["turn1_trie_tokens"] / s["turn1_prompt_tokens"]
            label = "best possible (prefix trie)" if first else None
            b.hlines(best, i - 0.45, i + 0.45, colors="gray", linestyles="--", label=label)
            first = False
    b.set_ylim(0, 1.3)
    b.legend(fontsize=7, loc="upper center", ncol=2)
    b.set_ylabel("prefix-cache hit rate (cached / prompt tokens)")
    b.set_title("hit rate", fontsize=8)
    args = result.get("args") or {}
    kernels = f", --cpu-kernels {args['cpu_kernels']}" if args.get("cpu_kernels") else ""
    fig.suptitle(
        f"prefix_sharing.py: {args.get('dtype', '')}{kernels}, {_rounds(args)} ({_stamp(result)})",
        fontsize=9,
    )
    _save(fig, path)


# ---- programs/run.py --------------------------------------------------------------------------
PROGRAM_SYSTEMS = {"on": "cache on", "off": "cache off", "openai": "OpenAI API, cache on"}


def plot_programs(result: dict, path: Path) -> None:
    plt = _pyplot()
    res = result["results"]
    programs = list(res)
    systems = list(dict.fromkeys(s for by in res.values() for s in by))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))

    def passes(p: str, s: str) -> tuple[float, list[float]] | None:
        r = res[p].get(s)
        if r is None:
            return None
        return r["programs_s"], [r["programs"] / w for w in r.get("walls_s") or [r["wall_s"]]]

    def hit(p: str, s: str) -> list[float] | None:
        r = res[p].get(s)
        return None if r is None or r.get("hit_rate") is None else [r["hit_rate"]]

    names = {s: PROGRAM_SYSTEMS.get(s, s) for s in systems}
    bars(
        a,
        programs,
        {names[s]: [passes(p, s) for p in programs] for s in systems},
        log=True,
        rotation=20,
    )
    a.set_ylabel("programs/s (log)")
    a.set_title("throughput: the median round (dots: every round)", fontsize=8)
    bars(
        b,
        programs,
        {names[s]: [hit(p, s) for p in programs] for s in systems},
        fmt=".0%",
        rotation=20,
    )
    b.set_ylim(0, 1.3)
    b.legend(fontsize=7, loc="upper center", ncol=3)
    b.set_ylabel("prefix-cache hit rate (server: hit / queried tokens)")
    b.set_title("hit rate", fontsize=8)
    args = result.get("args") or {}
    fig.suptitle(
        f"programs/run.py: {args.get('num_programs', '?')} programs each, "
        f"{args.get('num_threads', '?')} concurrent, {_rounds(args)}"
        f"{', --cpu-kernels ' + args['cpu_kernels'] if args.get('cpu_kernels') else ''} "
        f"({_stamp(result)})",
        fontsize=9,
    )
    _save(fig, path)


# ---- serving.py -------------------------------------------------------------------------------
def _concurrency(record: dict, result: dict) -> tuple[float, str]:
    """(x position, label) of a run's max concurrency: unlimited = every request at once."""
    c = record.get("max_concurrency", (result.get("args") or {}).get("max_concurrency"))
    if isinstance(c, list):  # a sweep's args; its records name their own levels
        c = c[0] if len(c) == 1 else None
    if c:
        return float(c), str(c)
    n = record["summary"]["completed"] + record["summary"]["failed"]
    return float(n), f"all {n}"


def _latency(ax: Any, result: dict, metric: str, title: str) -> None:
    """CDF of one latency per run: from the run's saved quantiles, else its p50 and p99 only."""
    several = len({_concurrency(r, result)[1] for r in result["runs"]}) > 1
    partial = False
    for k, r in enumerate(result["runs"]):
        label = r["label"] + (f" c{_concurrency(r, result)[1]}" if several else "")
        color = f"C{k % 10}"
        q = (r.get("quantiles_ms") or {}).get(metric)
        if q:
            ax.plot(q, [i / (len(q) - 1) for i in range(len(q))], color=color, label=label)
            continue
        s = r["summary"]
        points = [(s.get(f"median_{metric}_ms"), 0.5), (s.get(f"p99_{metric}_ms"), 0.99)]
        points = [(x, y) for x, y in points if x]
        if points:
            ax.plot(*zip(*points), "o", color=color, label=f"{label} (p50, p99)")
            partial = True
        if s.get(f"mean_{metric}_ms"):
            ax.axvline(s[f"mean_{metric}_ms"], color=color, linestyle=":", linewidth=1)
    _log_axis(ax, "x")
    ax.set_xlabel(f"{title} (ms, log)")
    ax.set_ylabel("share of samples at or below")
    ax.set_ylim(0, 1.02)
    note = " (run saved p50/p99/mean only; dotted: mean)" if partial else ""
    ax.set_title(f"{title} CDF{note}", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")


def plot_serving(result: dict, path: Path) -> None:
    plt = _pyplot()
    runs = result["runs"]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4))
    labels = list(dict.fromkeys(r["label"] for r in runs))
    for k, label in enumerate(labels):
        mine = sorted(
            ((_concurrency(r, result)[0], r) for r in runs if r["label"] == label),
            key=lambda pair: pair[0],
        )
        xs = [x for x, _ in mine]
        ys = [r["summary"]["output_throughput"] for _, r in mine]
        a.plot(xs, ys, "o-", color=f"C{k % 10}", label=label)
        for x, y, (_, r) in zip(xs, ys, mine):
            a.annotate(
                f"{r['summary']['request_throughput']:.2f} req/s",
                (x, y),
                fontsize=6,
                textcoords="offset points",
                xytext=(3, 3),
            )
    ticks = sorted({_concurrency(r, result) for r in runs})
    if len(ticks) > 1:
        a.set_xscale("log", base=2)
    a.set_xticks([x for x, _ in ticks], [t for _, t in ticks])
    a.minorticks_off()
    a.set_ylim(bottom=0, top=a.get_ylim()[1] * 1.1)
    a.set_xlabel("max concurrency (requests in flight)")
    a.set_ylabel("output tok/s")
    a.set_title("throughput against concurrency", fontsize=8)
    a.legend(fontsize=7)
    _latency(b, result, "ttft", "TTFT")
    _latency(c, result, "itl", "ITL")
    args = result.get("args") or {}
    rate = args.get("request_rate", "inf")
    fig.suptitle(
        f"serving.py: {args.get('dataset_name', '?')}, {runs[0]['summary']['completed']} requests, "
        f"{args.get('backend', '')} backend, request rate {rate} ({_stamp(result)})",
        fontsize=9,
    )
    _save(fig, path)


# ---- json_decoding.py / json_decoding_masks.py ------------------------------------------------
def _mask_systems(masks: dict) -> dict[str, dict]:
    """``{system: {records, summary}}``; the oldest results hold one system's dict directly."""
    return {"outlines": masks} if "records" in masks else masks


def _walk_p50s(record: dict) -> list[float]:
    walks = record.get("walks") or ([record["walk"]] if record.get("walk") else [])
    return [w.get("mask_p50_us", w.get("p50_us")) for w in walks]


def _e2e_passes(e2e: dict) -> list[dict[str, dict]]:
    return e2e.get("passes") or [e2e["systems"]]


def plot_json_decoding(result: dict, path: Path) -> None:
    plt = _pyplot()
    masks, e2e = result.get("masks"), result.get("e2e")
    n = 2 * bool(masks) + bool(e2e)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4.2), squeeze=False)
    axes = list(axes[0])
    targets = result.get("targets") or {}
    if masks:
        a, b = axes.pop(0), axes.pop(0)
        for k, (system, res) in enumerate(_mask_systems(masks).items()):
            records = res["records"]
            ok = [
                r for r in records if r["status"] == "compiled" and r.get("compile_ms") is not None
            ]
            label = f"{system} ({len(ok) / max(1, len(records)):.0%} compiled)"
            cdf(a, [r["compile_ms"] for r in ok], label, total=len(records), color=f"C{k % 10}")
            p50s = [x for r in ok for x in _walk_p50s(r) if x is not None]
            cdf(b, p50s, f"{system} ({len(p50s)} walks)", color=f"C{k % 10}")
        for key, style in (("compile_p50_ms", ":"), ("compile_p95_ms", "--")):
            if key in targets:
                a.axvline(
                    targets[key],
                    color="gray",
                    linestyle=style,
                    linewidth=1,
                    label=f"target {key.split('_')[1]} {targets[key]:g} ms",
                )
        _log_axis(a, "x")
        a.set_xlabel("compile time (ms, log)")
        a.set_ylabel("share of all schemas compiled within")
        a.set_ylim(0, 1.02)
        count = max(len(r["records"]) for r in _mask_systems(masks).values())
        a.set_title(f"grammar compile-time CDF, {count} schemas", fontsize=8)
        a.legend(fontsize=7, loc="lower right")
        if "mask_p50_us" in targets:
            b.axvline(
                targets["mask_p50_us"],
                color="gray",
                linestyle=":",
                linewidth=1,
                label=f"target p50 {targets['mask_p50_us']:g} us",
            )
        _log_axis(b, "x")
        b.set_xlabel("median fill_mask time of a random walk (us, log)")
        b.set_ylabel("share of walks")
        b.set_ylim(0, 1.02)
        b.set_title("mask cost CDF (walks over compiled schemas)", fontsize=8)
        b.legend(fontsize=7, loc="lower right")
    if e2e:
        _plot_e2e(axes.pop(0), e2e)
    parts = "compile time and mask cost" if masks else ""
    parts += (" / " if masks and e2e else "") + ("end to end" if e2e else "")
    fig.suptitle(f"json_decoding.py: {parts} ({_stamp(result)})", fontsize=9)
    _save(fig, path)


def _plot_e2e(ax: Any, e2e: dict) -> None:
    """Requests/s per workload and backend, jump-forward on vs off, every pass a dot;
    transformers (one pass, regex) as a line."""
    passes = _e2e_passes(e2e)
    groups: dict[str, dict[str, list[float]]] = {}
    hf: list[float] = []
    for systems in passes:
        for name, r in systems.items():
            if name == "transformers":
                hf.append(r["req_s"])
                continue
            on = not name.endswith("_no_jump")
            group = name.removesuffix("_no_jump").removesuffix("_jump").replace("_", " ")
            series = "jump-forward on" if on else "jump-forward off"
            groups.setdefault(group, {}).setdefault(series, []).append(r["req_s"])
    names = list(groups)
    series = {s: [groups[g].get(s) for g in names] for s in ("jump-forward on", "jump-forward off")}
    bars(ax, names, series, rotation=15)
    if hf:
        ax.axhline(
            _median(hf),
            color="gray",
            linestyle="--",
            linewidth=1,
            label=f"transformers + outlines-core (regex): {_median(hf):.2f}",
        )
        ax.legend(fontsize=7)
    ax.set_ylabel("requests/s")
    n = len(passes)
    ax.set_title(
        f"end to end, {n} pass{'es' if n > 1 else ''}: median bar, dots: passes", fontsize=8
    )


# ---- quantization.py --------------------------------------------------------------------------
def plot_quantization(result: dict, path: Path) -> None:
    plt = _pyplot()
    systems = result["systems"]
    order = [s for s in ("bf16", "w8a16", "fp32") if s in systems] + [
        s for s in systems if s not in ("bf16", "w8a16", "fp32")
    ]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.8))
    sizes = sorted({k for s in order for k in systems[s].get("step_ms", {})}, key=int)
    bars(
        a,
        [f"batch {k}" for k in sizes],
        {
            s: [
                [systems[s]["step_ms"][k]] if k in systems[s].get("step_ms", {}) else None
                for k in sizes
            ]
            for s in order
        },
        fmt=".1f",
    )
    a.set_ylabel("decode ms per step")
    a.set_title("decode step time (best of the repeats)", fontsize=8)
    pairs, seen = [], set()
    for s in order:  # each unordered pair once (bf16 vs fp32 = fp32 vs bf16)
        for key in systems[s]:
            other = key.removeprefix("prompt_logprob_drift_vs_")
            if key.startswith("prompt_logprob_drift_vs_") and frozenset((s, other)) not in seen:
                seen.add(frozenset((s, other)))
                pairs.append((s, key, other))
    bars(
        b,
        [f"{s} vs {other}" for s, _, other in pairs],
        {stat: [[systems[s][key][stat]] for s, key, _ in pairs] for stat in ("mean", "max")},
        fmt=".3f",
    )
    b.set_ylabel("|prompt-token logprob difference|")
    b.set_title("teacher-forced prompt-logprob drift", fontsize=8)
    greedy = [s for s in order if "greedy_vs_bf16" in systems[s]]
    labels = []
    for s in greedy:
        g = systems[s]["greedy_vs_bf16"]
        labels.append(
            f"{s} vs bf16\n{g['equal']}/{g['total']} identical,\n"
            f"common prefix {g['mean_common_prefix']:.1f} tok"
        )
    shares = {
        "identical greedy outputs": [
            [systems[s]["greedy_vs_bf16"]["equal"] / systems[s]["greedy_vs_bf16"]["total"]]
            for s in greedy
        ]
    }
    bars(c, labels, shares, fmt=".0%")
    c.set_ylim(0, 1.1)
    c.set_title("greedy outputs identical to bf16", fontsize=8)
    fig.suptitle(f"quantization.py: w8a16 vs bf16 vs fp32, one run ({_stamp(result)})", fontsize=9)
    _save(fig, path)


# ---- gpu.py -----------------------------------------------------------------------------------
def plot_gpu(result: dict, path: Path) -> None:
    plt = _pyplot()
    targets = result.get("targets") or {}
    panels = [k for k in ("throughput", "batch1", "prefix") if result.get(k)]
    if not panels:
        raise ValueError("the result holds no phase to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "throughput":
            runs = result["throughput"]
            for label, no in (("overlap on", False), ("overlap off", True)):
                pts = sorted(
                    (int(k[1:].split("_")[0]), r)
                    for k, r in runs.items()
                    if k.endswith("_no_overlap") == no
                )
                if not pts:
                    continue
                xs, ys = [x for x, _ in pts], [r["output_tok_s"] for _, r in pts]
                ax.plot(xs, ys, "o-" if not no else "s", label=label)
                for x, y, (_, r) in zip(xs, ys, pts):
                    ax.annotate(
                        f"idle {r['idle_share']:.0%}",
                        (x, y),
                        fontsize=6,
                        textcoords="offset points",
                        xytext=(3, -9 if no else 3),
                    )
            xs = sorted({int(k[1:].split("_")[0]) for k in runs})
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.minorticks_off()
            if "output_tok_s" in targets:
                ax.axhline(
                    targets["output_tok_s"],
                    color="gray",
                    linestyle="--",
                    linewidth=1,
                    label=f"target {targets['output_tok_s']:g}",
                )
            ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.1)
            ax.set_xlabel("max running requests")
            ax.set_ylabel("output tok/s")
            ax.set_title("throughput against concurrency", fontsize=8)
        elif panel == "batch1":
            r = result["batch1"]
            bars(
                ax,
                ["decode", "roofline"],
                {"tok/s": [r.get("rates") or [r["decode_tok_s"]], [r["roofline_tok_s"]]]},
                fmt=".0f",
            )
            if "batch1_tok_s" in targets:
                ax.axhline(
                    targets["batch1_tok_s"],
                    color="gray",
                    linestyle="--",
                    linewidth=1,
                    label=f"target {targets['batch1_tok_s']:g}",
                )
            ax.set_ylabel("tok/s, batch 1")
            ax.set_title(f"batch-1 decode: {r['roofline_share']:.0%} of the roofline", fontsize=8)
        else:
            p = result["prefix"]
            names = [k for k in ("radix_on", "radix_off") if k in p]
            bars(
                ax,
                [k.replace("_", " ") for k in names],
                {"requests/s": [[p[k]["requests_s"]] for k in names]},
            )
            for i, k in enumerate(names):
                share = p[k]["cached_tokens"] / max(1, p[k]["prompt_tokens"])
                ax.annotate(
                    f"hit rate {share:.0%}",
                    (i, 0),
                    ha="center",
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(0, 4),
                )
            ax.set_ylabel("requests/s")
            ax.set_title(f"shared prefix, on / off: {p.get('ratio', math.nan):.2f}x", fontsize=8)
        ax.legend(fontsize=7)
    args = result.get("args") or {}
    fig.suptitle(
        f"gpu.py: --shape {args.get('shape', '?')} on {args.get('device', '?')} ({_stamp(result)})",
        fontsize=9,
    )
    _save(fig, path)


# ---- dispatch ---------------------------------------------------------------------------------
PLOTS: dict[str, Callable[[dict, Path], None]] = {
    "offline_throughput": plot_offline_throughput,
    "prefix_sharing": plot_prefix_sharing,
    "serving": plot_serving,
    "programs": plot_programs,
    "json_decoding": plot_json_decoding,
    "quantization": plot_quantization,
    "gpu": plot_gpu,
}
SELF_PLOTTED = ("agents", "cpu_kernels", "soak", "vs_llamacpp")


def detect(result: dict, name: str = "") -> str:
    """Which benchmark wrote ``result``: by its keys, else by the file name's prefix."""
    runs = result.get("runs")
    first = runs[0] if isinstance(runs, list) and runs and isinstance(runs[0], dict) else {}
    if "masks" in result or "e2e" in result:
        return "json_decoding"
    if "verdicts" in result or "batch1" in result:
        return "gpu"
    systems = result.get("systems")
    if isinstance(systems, dict) and any("step_ms" in v for v in systems.values()):
        return "quantization"
    if isinstance(result.get("results"), dict) and "programs" in result:
        return "programs"
    if "request_throughput" in first.get("summary", {}):
        return "serving"
    if "radixlm" in first and "transformers" in first:
        return "offline_throughput"
    if (
        isinstance(runs, dict)
        and runs
        and all(isinstance(r, dict) and "workloads" in r for r in runs.values())
    ):
        return "prefix_sharing"
    stem = Path(name).name
    for kind in sorted(PLOTS, key=len, reverse=True):
        if stem.startswith(kind):
            return kind
    if stem.startswith(SELF_PLOTTED):
        raise ValueError(f"{stem}: its script draws its own plot (bench/{stem.split('_')[0]}...)")
    raise ValueError(f"{name or 'result'}: not a result of one of {', '.join(PLOTS)}")


def plot_result(result: dict, path: str | Path, kind: str | None = None, name: str = "") -> None:
    PLOTS[kind or detect(result, name)](result, Path(path))


def plot_path(plot_file: str | None, json_path: str | Path | None) -> str | None:
    """``--plot-file`` as given ('' = none), else the JSON path with .png (None without one)."""
    if plot_file is not None:
        return plot_file or None
    return str(Path(json_path).with_suffix(".png")) if json_path else None


def write_plot(kind: str, result: dict, path: str | Path | None) -> None:
    """Plot ``result`` (a script's JSON dict) to ``path`` (nothing when None), after a JSON round
    trip: the plot sees exactly what the JSON file holds, so re-plotting the file gives the same
    figure. A plot never costs a run its result: failures are printed, not raised."""
    if not path:
        return
    try:
        PLOTS[kind](json.loads(json.dumps(result, default=str)), Path(path))
    except ImportError as e:
        print(f"no plot: {e}; not writing {path}", flush=True)
    except Exception as e:  # the run's numbers are already written: report, never raise
        print(f"no plot ({type(e).__name__}: {e}); not writing {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="result JSON files (bench/results/*.json)")
    p.add_argument("--kind", choices=sorted(PLOTS), help="default: recognised by content")
    p.add_argument("--out", default=None, help="PNG path (one result only); default: .json -> .png")
    args = p.parse_args(argv)
    if args.out and len(args.results) > 1:
        p.error("--out needs exactly one result file")
    failed = 0
    for name in args.results:
        try:
            result = json.loads(Path(name).read_text())
            plot_result(result, args.out or Path(name).with_suffix(".png"), args.kind, name)
        except (ImportError, OSError, ValueError, KeyError, TypeError) as e:
            print(f"{name}: no plot ({type(e).__name__}: {e})", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
