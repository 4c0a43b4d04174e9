"""Native CPU kernels (csrc/cpu) against the best torch alternative, side by side in one run.

A kernel ships only where this benchmark shows it wins. Each pass times every system on every
case, in rotating order (the machine is shared and noisy); the report lists every pass, the
median, and the ratio native / best torch alternative (> 1 = native faster).

Cases (shapes of the 120M benchmark Llama: hidden 768, 12 layers, 12/4 heads, head_dim 64,
FFN 2048, vocabulary 50257):
- ``linear``: one decode step's GEMMs (12 x [qkv, o, gate_up, down] + the LM head, distinct
  weights, so they stream from memory as in the model) for M = 1 .. 256 rows, fp32 and bf16:
  ``F.linear``, oneDNN prepacked (``torch.ops.mkldnn._linear_pointwise``), MKL packed sgemm
  (fp32), native packed; and native w8a16 (int8 weights) against the best bf16 system.
  The weight-streaming bound (weight bytes / measured read bandwidth) is printed beside it.
- ``decode_attention``: one layer's decode attention over a paged pool (scattered slots) for
  batch x context, torch_native (gather into a padded block + SDPA) against the native kernel;
  the per-step metadata is built outside the timed call.
- ``extend_attention``: one layer's prefill attention over the same kind of pool for an
  MMLU-like batch (8 x 60 new tokens after 450 cached), a 500-token prompt and a 256-token
  chunk after 1,500 cached: torch_native (gather + SDPA per request, a mask with a prefix; in
  q's dtype, and for bf16 also in fp32, which cpu_native ran before the kernel) against the
  native kernel.
- ``norm``, ``rope``, ``silu_mul``: the fused elementwise kernels against the torch ops.

Example (about 5 minutes on 2 cores):

    python bench/cpu_kernels.py --threads 2 --passes 3 \\
        --output-file bench/results/cpu_kernels_DATE.json --plot-file bench/results/cpu_kernels_DATE.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from common import environment, print_header

LINEAR_SHAPES = [(1280, 768), (768, 768), (4096, 768), (768, 2048)] * 12 + [(50257, 768)]


def timed(fn: Callable[[], Any], min_time: float = 0.3, max_reps: int = 200) -> float:
    """Median seconds per call after a warm-up call, over >= 3 reps and about ``min_time``."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def read_bandwidth(threads: int) -> float:
    """Bytes/s of a multithreaded read of 512 MB (best of 5): the weight-streaming rate."""
    import torch

    a = torch.ones(128 * 2**20)  # 512 MB fp32
    best = min(timed(lambda: a.sum(), 0.0, 5) for _ in range(5))
    return a.numel() * 4 / best


def linear_cases(kernels, dtypes: list[str], rows: list[int]) -> dict[str, dict[str, Callable]]:
    import torch
    import torch.nn.functional as F

    from radixlm.kernels.reference import quantize_per_channel

    cases: dict[str, dict[str, Callable]] = {}
    g = torch.Generator().manual_seed(0)
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        ws = [torch.randn(n, k, generator=g).to(dtype) for n, k in LINEAR_SHAPES]
        kind = "fp32" if dtype == torch.float32 else "bf16"
        native = [kernels.pack_linear_weight(w, kind) for w in ws]
        onednn = [torch.ops.mkldnn._reorder_linear_weight(w, None) for w in ws]
        int8 = [quantize_per_channel(w) for w in ws] if dtype == torch.bfloat16 else None
        int8_packed = [(kernels.pack_linear_weight(q, "int8"), s) for q, s in int8 or []]
        for m in rows:
            xs = {k: torch.randn(m, k, generator=g).to(dtype) for k in (768, 2048)}
            systems: dict[str, Callable] = {
                "torch F.linear": lambda ws=ws, xs=xs: [F.linear(xs[w.shape[1]], w) for w in ws],
                "oneDNN prepacked": lambda ws=ws, p=onednn, xs=xs: [
                    torch.ops.mkldnn._linear_pointwise(xs[w.shape[1]], pw, None, "none", [], "")
                    for w, pw in zip(ws, p)
                ],
                "native": lambda ws=ws, p=native, xs=xs, kind=kind: [
                    kernels.linear_packed(xs[w.shape[1]], pw, w.shape[0], kind, None, None)
                    for w, pw in zip(ws, p)
                ],
            }
            if dtype == torch.float32:
                mkl = [torch.ops.mkl._mkl_reorder_linear_weight(w, m) for w in ws]
                systems["MKL packed"] = lambda ws=ws, p=mkl, xs=xs, m=m: [
                    torch.ops.mkl._mkl_linear(xs[w.shape[1]], pw, w, None, m)
                    for w, pw in zip(ws, p)
                ]
            if int8_packed:
                systems["native w8a16"] = lambda ws=ws, p=int8_packed, xs=xs: [
                    kernels.linear_packed(xs[w.shape[1]], pw, w.shape[0], "int8", s, None)
                    for w, (pw, s) in zip(ws, p)
                ]
            cases[f"linear {dtype_name} M={m}"] = systems
    return cases


def attention_cases(kernels, dtypes: list[str]) -> dict[str, dict[str, Callable]]:
    import torch

    from radixlm.attention.cpu_native import CpuNativeBackend
    from radixlm.attention.torch_native import TorchNativeBackend
    from radixlm.engine.forward_batch import ForwardBatch, ForwardMode
    from radixlm.mem.kv_pool import TokenToKVPool
    from radixlm.mem.req_to_token import ReqToTokenPool

    class Layer:
        layer_id, num_heads, num_kv_heads, head_dim = 0, 12, 4, 64
        scaling, sliding_window = 64**-0.5, None

    cases: dict[str, dict[str, Callable]] = {}
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for batch, ctx in ((1, 512), (1, 4096), (8, 512), (32, 1024)):
            kv = TokenToKVPool(batch * ctx, 1, 4, 64, dtype, "cpu")
            kv.k_buffers[0].normal_()
            kv.v_buffers[0].normal_()
            rows = ReqToTokenPool(batch, ctx, "cpu")
            perm = torch.randperm(batch * ctx) + 1  # scattered slots, as after eviction churn
            rows.req_to_token[:] = perm.view(batch, ctx).int()
            lens = [ctx - 7 * i for i in range(batch)]
            fb = ForwardBatch(
                mode=ForwardMode.DECODE,
                input_ids=torch.zeros(batch, dtype=torch.int64),
                positions=torch.tensor(lens) - 1,
                out_cache_loc=torch.zeros(batch, dtype=torch.int64),
                req_pool_indices=torch.arange(batch),
                seq_lens=torch.tensor(lens),
                seq_lens_cpu=lens,
                extend_prefix_lens_cpu=[],
                extend_seq_lens_cpu=[],
                req_to_token_pool=rows,
                kv_pool=kv,
            )
            q = torch.randn(batch, 12, 64).to(dtype)
            systems = {}
            for name, backend in (
                ("torch_native", TorchNativeBackend()),
                ("native", CpuNativeBackend(kernels=kernels, head_dim=64)),
            ):
                # Metadata is built once per step in the engine (not per layer): outside the
                # timed call; the torch path's per-layer K/V gather is inside forward_decode.
                step = dataclasses.replace(fb, attn_metadata=None)
                backend.init_forward_metadata(step)
                systems[name] = lambda b=backend, st=step, q=q: b.forward_decode(q, Layer, st)
            cases[f"decode_attention {dtype_name} B={batch} ctx={ctx}"] = systems
        # Extend: an MMLU-like batch (8 questions of 60 tokens after a 450-token cached
        # 5-shot prefix), one 500-token prompt, and a 256-token chunk after 1500 cached.
        for prefix, ext in (([450] * 8, [60] * 8), ([0], [500]), ([1500], [256])):
            lens = [a + b for a, b in zip(prefix, ext)]
            batch, ctx = len(lens), max(lens)
            kv = TokenToKVPool(sum(lens), 1, 4, 64, dtype, "cpu")
            kv.k_buffers[0].normal_()
            kv.v_buffers[0].normal_()
            rows = ReqToTokenPool(batch, ctx, "cpu")
            perm = torch.randperm(sum(lens)) + 1
            used, new_slots = 0, []
            for b, n in enumerate(lens):
                rows.req_to_token[b, :n] = perm[used : used + n].int()
                new_slots.append(perm[used + prefix[b] : used + n])
                used += n
            out_loc = torch.cat(new_slots).long()
            t = sum(ext)
            fb = ForwardBatch(
                mode=ForwardMode.EXTEND,
                input_ids=torch.zeros(t, dtype=torch.int64),
                positions=torch.cat([torch.arange(a, a + b) for a, b in zip(prefix, ext)]),
                out_cache_loc=out_loc,
                req_pool_indices=torch.arange(batch),
                seq_lens=torch.tensor(lens),
                seq_lens_cpu=lens,
                extend_prefix_lens_cpu=prefix,
                extend_seq_lens_cpu=ext,
                req_to_token_pool=rows,
                kv_pool=kv,
            )
            q = torch.randn(t, 12, 64).to(dtype)
            k, v = kv.k_buffers[0][out_loc], kv.v_buffers[0][out_loc]
            systems = {}
            for name, backend, cast in (
                ("torch_native", TorchNativeBackend(), None),
                # what cpu_native ran before the kernel: the torch path in fp32
                ("torch_native_fp32", TorchNativeBackend(), torch.float32),
                ("native", CpuNativeBackend(kernels=kernels, head_dim=64), None),
            ):
                if cast is not None and dtype == cast:
                    continue
                step = dataclasses.replace(fb, attn_metadata=None)
                backend.init_forward_metadata(step)
                qc, kc, vc = (x if cast is None else x.to(cast) for x in (q, k, v))
                systems[name] = lambda b=backend, st=step, a=(qc, kc, vc): b.forward_extend(
                    *a, Layer, st
                )
            name = f"extend_attention {dtype_name} B={batch} new={ext[0]} prefix={prefix[0]}"
            cases[name] = systems
    return cases


def elementwise_cases(kernels, dtypes: list[str]) -> dict[str, dict[str, Callable]]:
    import torch

    from radixlm.kernels import reference as ref
    from radixlm.layers.rotary import RotaryEmbedding

    rotary = RotaryEmbedding(64, 10000.0, 4096, None, "cpu")
    cases: dict[str, dict[str, Callable]] = {}
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for t in (1, 8, 512):
            x = torch.randn(t, 768).to(dtype)
            res = torch.randn(t, 768).to(dtype)
            w = torch.ones(768).to(dtype)
            cases[f"add_rmsnorm {dtype_name} T={t}"] = {
                "torch": lambda x=x, r=res, w=w: ref.add_rmsnorm(x, r, w, 1e-6),
                "native": lambda x=x, r=res, w=w: kernels.add_rmsnorm(x, r, w, 1e-6),
            }
            qkv = torch.randn(t, 1280).to(dtype)
            q, k, _ = qkv.split([768, 256, 256], dim=-1)
            q, k = q.view(t, 12, 64), k.view(t, 4, 64)
            pos = torch.arange(t)
            cases[f"rope {dtype_name} T={t}"] = {
                "torch": lambda q=q, k=k, p=pos: rotary(p, q, k),
                "native": lambda q=q, k=k, p=pos: kernels.rope_(
                    p, q, k, rotary.cos_cache, rotary.sin_cache
                ),
            }
            gu = torch.randn(t, 4096).to(dtype)
            cases[f"silu_mul {dtype_name} T={t}"] = {
                "torch": lambda gu=gu: ref.silu_mul(gu),
                "native": lambda gu=gu: kernels.silu_mul(gu),
            }
    return cases


def run_passes(cases: dict[str, dict[str, Callable]], passes: int) -> dict[str, dict[str, list]]:
    """Every system of every case once per pass, the systems' order rotating between passes."""
    times: dict[str, dict[str, list]] = {
        c: {s: [] for s in systems} for c, systems in cases.items()
    }
    for p in range(passes):
        for case, systems in cases.items():
            names = list(systems)
            names = names[p % len(names) :] + names[: p % len(names)]
            for name in names:
                times[case][name].append(timed(systems[name]))
        print(f"pass {p + 1}/{passes} done", flush=True)
    return times


def summarize(times: dict[str, dict[str, list]], bound: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    for case, systems in times.items():
        med = {s: statistics.median(v) for s, v in systems.items()}
        torch_best = min((v, s) for s, v in med.items() if not s.startswith("native"))
        row = {
            "case": case,
            "median_ms": {s: v * 1e3 for s, v in med.items()},
            "passes_ms": {s: [x * 1e3 for x in v] for s, v in systems.items()},
            "best_torch": torch_best[1],
            "speedup": torch_best[0] / med["native"],
        }
        if "native w8a16" in med:
            row["w8a16_vs_best_bf16"] = torch_best[0] / med["native w8a16"]
            row["w8a16_vs_native_bf16"] = med["native"] / med["native w8a16"]
        if case in bound:
            row["bound_ms"] = bound[case] * 1e3
            row["native_over_bound"] = med["native"] / bound[case]
        rows.append(row)
    return rows


def print_report(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        systems = "  ".join(f"{s} {v:.3f}" for s, v in r["median_ms"].items())
        extra = ""
        if "bound_ms" in r:
            extra += f"  bound {r['bound_ms']:.2f} ms (native {r['native_over_bound']:.2f}x)"
        if "w8a16_vs_native_bf16" in r:
            extra += f"  w8a16/native-bf16 {r['w8a16_vs_native_bf16']:.2f}x"
        print(
            f"{r['case']:<36} {systems}  ->  native {r['speedup']:.2f}x vs {r['best_torch']}{extra}"
        )
        for s, v in r["passes_ms"].items():
            print(f"    {s:<18} passes: " + ", ".join(f"{x:.3f}" for x in v))


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 0.28 * len(rows) + 1.5))
    labels = [r["case"] for r in rows]
    ax.barh(labels, [r["speedup"] for r in rows], color="tab:blue")
    ax.axvline(1.0, color="black", lw=1)
    ax.set_xscale("log")
    for i, r in enumerate(rows):
        ax.text(r["speedup"], i, f" {r['speedup']:.2f}x", va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("native / best torch alternative (median time ratio; > 1 = native faster)")
    ax.set_title("RadixLM native CPU kernels vs torch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--rows", default="1,2,4,8,16,64,256", help="M of the linear cases")
    p.add_argument("--parts", default="linear,attention,elementwise")
    p.add_argument("--output-file", default=None)
    p.add_argument("--plot-file", default=None)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    env = environment(args.threads)
    print_header(env, args.threads)
    from radixlm.kernels.cpu import load_cpu_kernels

    kernels = load_cpu_kernels(required=True)
    dtypes = args.dtypes.split(",")
    parts = args.parts.split(",")
    bw = read_bandwidth(args.threads)
    print(f"read bandwidth: {bw / 1e9:.1f} GB/s", flush=True)
    cases: dict[str, dict[str, Callable]] = {}
    bound: dict[str, float] = {}
    if "linear" in parts:
        rows = [int(x) for x in args.rows.split(",")]
        cases |= linear_cases(kernels, dtypes, rows)
        for d in dtypes:
            size = 4 if d == "float32" else 2
            nbytes = sum(n * k * size for n, k in LINEAR_SHAPES)
            for m in rows:
                bound[f"linear {d} M={m}"] = nbytes / bw
    if "attention" in parts:
        cases |= attention_cases(kernels, dtypes)
    if "elementwise" in parts:
        cases |= elementwise_cases(kernels, dtypes)
    rows_out = summarize(run_passes(cases, args.passes), bound)
    print_report(rows_out)
    result = {"env": env, "read_bandwidth_gbs": bw / 1e9, "rows": rows_out}
    if args.output_file:
        with open(args.output_file, "w") as f:
            json.dump(result, f, indent=1)
    if args.plot_file:
        plot(rows_out, args.plot_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
