"""``radixlm`` command line. Flags are generated from the fields of :class:`EngineConfig`
(and :class:`ServerConfig` for ``serve``), with SGLang's names.

radixlm generate "Once upon a time" --max-new-tokens 40 --temperature 0
radixlm serve --model-path DIR --port 30000
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import MISSING, fields
from typing import Any

from radixlm.config import EngineConfig
from radixlm.errors import RadixLMError
from radixlm.server.options import ServerConfig


def add_engine_args(parser: argparse.ArgumentParser, cls: type = EngineConfig) -> None:
    """One ``--flag-name`` per field of the config dataclass ``cls``, with help and choices."""
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type).split("|")[0].strip()
        default = f.default if f.default is not MISSING else None
        help_text = f.metadata.get("help", "")
        if kind == "bool":
            parser.add_argument(flag, action="store_true", default=default, help=help_text)
        else:
            conv = {"int": int, "float": float}.get(kind, str)
            if f.name == "model_path":
                flag = (flag, "--model")
            flags = (
                *(flag if isinstance(flag, tuple) else (flag,)),
                *f.metadata.get("aliases", ()),
            )
            parser.add_argument(
                *flags,
                dest=f.name,
                type=conv,
                default=default,
                choices=f.metadata.get("choices"),
                help=help_text,
            )


def engine_options(args: argparse.Namespace, cls: type = EngineConfig) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in fields(cls)}


def _serve(args: argparse.Namespace) -> int:
    from radixlm.server.launch import launch_server
    from radixlm.server.options import ServerConfig

    engine_config = EngineConfig.from_options(**engine_options(args))
    server_config = ServerConfig(**engine_options(args, ServerConfig)).resolve()
    return launch_server(engine_config, server_config)


def _generate(args: argparse.Namespace) -> int:
    from radixlm.entrypoints.engine import Engine

    params = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
    }
    if args.seed is not None:
        params["sampling_seed"] = args.seed
    with Engine(**engine_options(args)) as engine:
        prompts = args.prompt or ["Once upon a time"]
        if args.stream and len(prompts) == 1:
            shown = 0
            print(prompts[0], end="", flush=True)
            for chunk in engine.generate(prompts[0], params, stream=True):
                print(chunk["text"][shown:], end="", flush=True)
                shown = len(chunk["text"])
            print()
            return 0
        results = engine.generate(prompts, params)
        for prompt, r in zip(prompts, results):
            if args.json:
                print(json.dumps(r))
            else:
                print(prompt + r["text"])
                print(
                    f"  [{r['meta_info']['completion_tokens']} tokens, "
                    f"{r['meta_info']['e2e_latency']:.2f} s, finish {r['meta_info']['finish_reason']}]"
                )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="radixlm", description="RadixLM LLM runtime", allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser(
        "generate", help="generate text offline with the in-process engine", allow_abbrev=False
    )
    gen.add_argument("prompt", nargs="*", help="prompt(s); default: 'Once upon a time'")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=-1)
    gen.add_argument("--seed", type=int, default=None, help="sampling_seed per request")
    gen.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    gen.add_argument("--json", action="store_true", help="print full result objects as JSON lines")
    add_engine_args(gen)
    serve = sub.add_parser(
        "serve",
        help="serve the SGLang-native and OpenAI-compatible HTTP APIs",
        allow_abbrev=False,
    )
    add_engine_args(serve)
    add_engine_args(serve, ServerConfig)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(name)s: %(message)s"
    )
    try:
        return _serve(args) if args.command == "serve" else _generate(args)
    except RadixLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
