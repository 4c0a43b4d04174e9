"""The command line every ``dsl_*`` example shares: choose a backend, run, shut it down.

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
