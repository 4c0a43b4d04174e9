"""What every ``dsl_*`` example shares: the command line (choose a backend, run, shut it down)
and printing a program's trace.

``--url`` talks to a RadixLM (or SGLang) server; otherwise the bundled model runs in-process.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import radixlm_lang as sgl


def run_example(doc: str, run: Callable[[Any], Any], argv: list[str] | None) -> Any:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--url", help="a RadixLM/SGLang server; default: in-process engine")
    parser.add_argument("--max-total-tokens", type=int, help="KV pool size (in-process only)")
    parser.add_argument("--num-threads", type=int, help="torch CPU threads (in-process only)")
    args = parser.parse_args(argv)
    options = {"max_total_tokens": args.max_total_tokens, "num_threads": args.num_threads}
    backend = sgl.RuntimeEndpoint(args.url) if args.url else sgl.EngineBackend(**options)
    try:
        return run(backend)
    finally:
        backend.shutdown()


def print_trace_heads(state: Any, title: str) -> None:
    """Print ``title``, then the head line of each backend call in ``state.trace_text()`` (kind,
    variable, latency, cached tokens); ``trace_text()`` also has each call's prompt and output."""
    print(f"\n{title}")
    print("\n".join(line for line in state.trace_text().splitlines() if line.startswith("#")))
