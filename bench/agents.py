"""Multi-turn tool-calling agents against ``radixlm serve``: radix cache on vs off, one run.

Each episode is a Glaive tool-calling conversation (``--data``, default
``../shared/data/glaive_toolcall/glaive_toolcall_en_demo.json``): a system prompt, 8 tools (the
episode's own plus others from the dataset, realistic JSON-schema parameters) and ``--turns``
turns. Every turn sends the whole history so far with ``tool_choice: "required"`` and
``parallel_tool_calls: false`` (one call per turn, as an agent loop runs; streamed,
``stream_options.include_usage``), validates each returned call's arguments against its tool's
schema with ``jsonschema``, then appends the assistant's calls, one ``tool`` result per call (the
dataset's observation, else a stub) and the next user message. So an agent re-sends the same
system prompt, tool list and a growing history every turn: what the radix cache is for.

Model: the 120M random Llama of ``bench/common.py`` (GPT-2 vocabulary, built once in
``bench/.cache``) with a Hermes-format chat template (``--chat-template``, default the test
fixture ``tests/fixtures/chat_templates/hermes.jinja``). Systems, alternating per pass:
``cache`` (default server) and ``no-cache`` (``--disable-radix-cache``). Reported per system:
episodes/s, turns/s, cache hit rate (cached / prompt tokens, from ``usage``), TTFT p50/p99, the
share of calls whose arguments validate (must be 100 %), the turns whose call was cut at
``--max-tokens`` (string, array and number arguments get bounds where the dataset has none: see
:func:`bounded`), and the ratio cache / no-cache.

    python bench/agents.py --output-file bench/results/agents_DATE.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
from common import (
    DEFAULT_TOKENIZER,
    ModelShape,
    ensure_model,
    environment,
    print_header,
    repo_path,
)
from serving import error_message, http_request, iter_sse_data, launched_server, percentile

from radixlm_lang.backend.runtime_endpoint import free_port

DEFAULT_DATA = "../shared/data/glaive_toolcall/glaive_toolcall_en_demo.json"
DEFAULT_TEMPLATE = "tests/fixtures/chat_templates/hermes.jinja"
SYSTEM = (
    "You are a helpful assistant with access to tools. Call a tool whenever it helps, with "
    "arguments that match its schema exactly. Keep answers short."
)


def bounded(schema: Any, max_len: int) -> Any:
    """``schema`` with every string given a ``maxLength``, every array a ``maxItems``, every
    number bounds and every object with properties no others, where it has none. A random-weight model never chooses to close a string or
    an array (greedy, it writes one until the token limit), so unbounded ones would measure the
    token limit, not the agent loop; a trained model closes them itself."""
    if isinstance(schema, list):
        return [bounded(x, max_len) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bounded(v, max_len) for k, v in schema.items()}
    kind = out.get("type")
    if kind == "string" and "enum" not in out:
        out.setdefault("maxLength", max_len)
    elif kind == "array":
        out.setdefault("maxItems", 3)
    elif kind == "object" and "properties" in out:
        out.setdefault("additionalProperties", False)
    elif kind in ("integer", "number"):
        out.setdefault("minimum", -999999)
        out.setdefault("maximum", 999999)
    return out


def load_episodes(path: Path, n: int, tools_per_episode: int, seed: int) -> list[dict[str, Any]]:
    """Episodes with 8 tools each and the user messages / observations of their conversation."""
    data = json.loads(path.read_text())
    pool: dict[str, dict] = {}
    for ex in data:
        for t in json.loads(ex.get("tools") or "[]"):
            pool.setdefault(t["name"], t)
    rng = random.Random(seed)
    names = sorted(pool)
    episodes = []
    for ex in data:
        own = json.loads(ex.get("tools") or "[]")
        users = [c["value"] for c in ex["conversations"] if c["from"] == "human"]
        if not own or not users:
            continue
        chosen = {t["name"] for t in own}
        extra = [x for x in rng.sample(names, len(names)) if x not in chosen]
        tools = own + [pool[x] for x in extra[: tools_per_episode - len(own)]]
        tools = [{**t, "parameters": bounded(t.get("parameters", {}), 24)} for t in tools]
        rng.shuffle(tools)
        obs = [c["value"] for c in ex["conversations"] if c["from"] == "observation"]
        episodes.append(
            {
                "tools": [{"type": "function", "function": t} for t in tools],
                "users": users,
                "observations": obs,
            }
        )
        if len(episodes) == n:
            break
    return episodes


async def chat_turn(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """One streamed chat request: TTFT, the calls (accumulated deltas), usage."""
    t0 = time.perf_counter()
    resp = await http_request(url + "/v1/chat/completions", "POST", body)
    try:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {error_message(await resp.read())}")
        ttft, calls, usage = None, {}, None
        async for data in iter_sse_data(resp.iter_body()):
            # the first event (the role chunk) leaves once the prompt is computed and the first
            # token sampled; calls arrive when complete
            ttft = ttft if ttft is not None else time.perf_counter() - t0
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(error_message(chunk))
            usage = chunk.get("usage") or usage
            for ch in chunk.get("choices", []):
                for d in ch["delta"].get("tool_calls") or []:
                    e = calls.setdefault(d["index"], {"id": None, "name": None, "arguments": ""})
                    e["id"] = d.get("id") or e["id"]
                    fn = d.get("function") or {}
                    e["name"] = fn.get("name") or e["name"]
                    e["arguments"] += fn.get("arguments") or ""
        return {"ttft": ttft, "calls": [calls[k] for k in sorted(calls)], "usage": usage}
    finally:
        resp.close()


async def run_episode(url: str, ep: dict[str, Any], turns: int, max_tokens: int) -> dict:
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in ep["tools"]}
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    out = {"ttft": [], "calls": 0, "valid": 0, "prompt": 0, "cached": 0, "cut": 0}
    for turn in range(turns):
        messages.append({"role": "user", "content": ep["users"][turn % len(ep["users"])]})
        body = {
            "model": "bench", "messages": messages, "tools": ep["tools"],
            "tool_choice": "required", "parallel_tool_calls": False,
            "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True},
        }  # fmt: skip
        r = await chat_turn(url, body)
        out["ttft"].append(r["ttft"])
        out["prompt"] += r["usage"]["prompt_tokens"]
        out["cached"] += r["usage"]["prompt_tokens_details"]["cached_tokens"]
        tool_calls = []
        for c in r["calls"]:
            out["calls"] += 1
            try:
                jsonschema.validate(json.loads(c["arguments"]), schemas[c["name"]])
                out["valid"] += 1
            except (ValueError, KeyError, jsonschema.ValidationError):
                pass
            tool_calls.append(
                {"id": c["id"], "type": "function",
                 "function": {"name": c["name"], "arguments": c["arguments"]}}
            )  # fmt: skip
        if not tool_calls:  # the call was cut at max_tokens (finish_reason length)
            out["cut"] += 1
            messages.append({"role": "assistant", "content": "(no complete call)"})
            continue
        messages.append({"role": "assistant", "content": None, "tool_calls": tool_calls})
        for k, c in enumerate(tool_calls):
            obs = (
                ep["observations"][(turn + k) % len(ep["observations"])]
                if ep["observations"]
                else '{"ok": true}'
            )
            messages.append({"role": "tool", "tool_call_id": c["id"], "content": obs})
    return out


async def run_system(url: str, episodes: list[dict], turns: int, clients: int, max_tokens: int):
    sem = asyncio.Semaphore(clients)

    async def one(ep):
        async with sem:
            return await run_episode(url, ep, turns, max_tokens)

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(ep) for ep in episodes))
    dur = time.perf_counter() - t0
    ttfts = [t for r in results for t in r["ttft"] if t is not None]
    calls = sum(r["calls"] for r in results)
    prompt = sum(r["prompt"] for r in results)
    return {
        "seconds": dur,
        "episodes_per_s": len(episodes) / dur,
        "turns_per_s": len(episodes) * turns / dur,
        "cache_hit_rate": sum(r["cached"] for r in results) / max(1, prompt),
        "prompt_tokens": prompt,
        "ttft_p50_ms": percentile(ttfts, 50) * 1e3,
        "ttft_p99_ms": percentile(ttfts, 99) * 1e3,
        "calls": calls,
        "valid_share": sum(r["valid"] for r in results) / max(1, calls),
        "turns_cut": sum(r["cut"] for r in results),
    }


def plot(path: Path, runs: dict[str, list[dict]]) -> None:
    """Episodes/s and TTFT p50 of each system, every pass a dot, the median a bar."""
    try:
        import matplotlib
    except ImportError:
        print(f"no plot: matplotlib is not installed (pip install -e .[bench]); not writing {path}")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    for ax, key, label in (
        (axes[0], "episodes_per_s", "episodes/s"),
        (axes[1], "ttft_p50_ms", "TTFT p50 (ms)"),
    ):
        for i, name in enumerate(names):
            values = sorted(r[key] for r in runs[name])
            ax.bar(i, values[len(values) // 2], 0.6, label=name)
            ax.plot([i] * len(values), values, "k.", markersize=4)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel(label)
    hit = {n: runs[n][0]["cache_hit_rate"] for n in names}
    fig.suptitle(
        "agents, tool_choice=required: " + ", ".join(f"{n} hit {h:.0%}" for n, h in hit.items()),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--tools", type=int, default=8, help="tools per episode")
    p.add_argument("--clients", type=int, default=4, help="episodes run concurrently")
    p.add_argument(
        "--max-tokens", type=int, default=384, help="per turn (a call cut here is counted)"
    )
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=DEFAULT_DATA, help="Glaive tool-call JSON")
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="relative to the repo root")
    p.add_argument("--chat-template", default=DEFAULT_TEMPLATE, help="a Hermes-format template")
    p.add_argument("--output-file", default=None)
    args = p.parse_args()
    for name in ("data", "tokenizer", "chat_template"):
        if not repo_path(getattr(args, name)).exists():
            p.error(f"--{name.replace('_', '-')} {repo_path(getattr(args, name))}: not found")
    env = environment(args.threads)
    print_header(env, args.threads)
    model_dir = ensure_model(ModelShape(tied=False), repo_path(args.tokenizer), None)
    episodes = load_episodes(repo_path(args.data), args.episodes, args.tools, args.seed)
    systems = {"cache": [], "no-cache": ["--disable-radix-cache"]}
    runs: dict[str, list[dict]] = {name: [] for name in systems}
    logs = Path("/tmp") / f"radixlm_agents_{free_port()}"
    logs.mkdir(parents=True, exist_ok=True)
    for pas in range(args.passes):
        order = list(systems) if pas % 2 == 0 else list(systems)[::-1]
        for name in order:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            cmd = [sys.executable, "-m", "radixlm.launch_server", "--model-path", str(model_dir),
                   "--port", str(port), "--num-threads", str(args.threads), "--dtype", args.dtype,
                   "--chat-template", str(repo_path(args.chat_template)),
                   "--served-model-name", "bench", "--context-length", "8192", *systems[name]]  # fmt: skip
            with launched_server(cmd, url, 600, logs / f"{name}_{pas}.log"):
                r = asyncio.run(
                    run_system(url, episodes, args.turns, args.clients, args.max_tokens)
                )
            runs[name].append(r)
            print(
                f"[pass {pas + 1}] {name:9s} {r['episodes_per_s']:.3f} episodes/s, "
                f"{r['turns_per_s']:.2f} turns/s, hit rate {r['cache_hit_rate']:.1%}, TTFT p50 "
                f"{r['ttft_p50_ms']:.0f} ms p99 {r['ttft_p99_ms']:.0f} ms, {r['calls']} calls, "
                f"valid {r['valid_share']:.1%}, turns cut at max tokens {r['turns_cut']}",
                flush=True,
            )
    ratios = [
        c["episodes_per_s"] / n["episodes_per_s"] for c, n in zip(runs["cache"], runs["no-cache"])
    ]
    print("cache / no-cache episodes/s per pass: " + ", ".join(f"{x:.2f}x" for x in ratios))
    valid = min(r["valid_share"] for rs in runs.values() for r in rs)
    print(f"calls that validate: {valid:.1%} (lowest over all runs)")
    if args.output_file:
        out = {"env": env, "args": vars(args), "runs": runs, "ratios": ratios}
        Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_file).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.output_file}")
        plot(Path(args.output_file).with_suffix(".png"), runs)
    return 0 if valid == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
