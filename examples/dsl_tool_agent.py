"""A tool-calling agent: the model calls a Python calculator through ``gen(tools=...)``, reads
its results as ``tool`` messages, and answers.

    python examples/dsl_tool_agent.py --model-path /models/Qwen2.5-0.5B-Instruct  # in-process
    python examples/dsl_tool_agent.py --model-path DIR --chat-template tools.jinja
    python examples/dsl_tool_agent.py --url http://127.0.0.1:30000

The model needs a chat template that renders tools (its tokenizer's, or ``--chat-template``: a
Jinja file such as ``tests/fixtures/chat_templates/hermes.jinja``); the call format is the one
the template implies unless ``--tool-call-parser`` names it. With ``--url`` the server's own
template and parser are used (``radixlm serve --chat-template ... --tool-call-parser ...``).

Each step is one assistant turn ``sgl.gen(tools=TOOLS)``: its prompt is the chat so far rendered
by the model's template with the tools, and a call's arguments are constrained to the tool's
JSON schema, so every call parses, even on a tiny random model. The first step must call
(``tool_choice="required"``); later ones may answer instead (``"auto"``). Each call runs in
Python and its result goes back with ``sgl.tool(result, tool_call_id=...)``; after
``max_steps`` the model answers without tools (``tool_choice="none"``). Every turn reuses the
conversation before it from the radix cache.
"""

from __future__ import annotations

import argparse
import json
import operator
from typing import Any

from _dsl_cli import print_trace_heads

import radixlm_lang as sgl

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Compute a op b for two integers.",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "minimum": -1000, "maximum": 1000},
                    "op": {"enum": list(OPS)},
                    "b": {"type": "integer", "minimum": -1000, "maximum": 1000},
                },
                "required": ["a", "op", "b"],
                "additionalProperties": False,
            },
        },
    }
]


def calculator(a: int, op: str, b: int) -> dict[str, Any]:
    try:
        return {"result": OPS[op](a, b)}
    except ZeroDivisionError:
        return {"error": "division by zero"}


def run_tool(call: dict[str, Any]) -> dict[str, Any]:
    """Run one OpenAI-form call; a call the tool cannot take becomes an error result."""
    fn = call["function"]
    if fn["name"] != "calculator":
        return {"error": f"unknown tool {fn['name']!r}"}
    try:
        return calculator(**json.loads(fn["arguments"]))
    except (TypeError, KeyError, ValueError) as e:
        return {"error": str(e)}


@sgl.function
def agent(s, question, max_steps=3):
    s += sgl.system("You are a careful assistant. Use the calculator for arithmetic.")
    s += sgl.user(question)
    for step in range(max_steps):
        choice = "required" if step == 0 else "auto"
        s += sgl.assistant(sgl.gen(f"step{step}", tools=TOOLS, tool_choice=choice, max_tokens=96))
        calls = s.tool_calls(f"step{step}")
        if not calls:
            s["answer"] = s[f"step{step}"]  # the model answered instead of calling
            return
        for call in calls:
            s += sgl.tool(run_tool(call), tool_call_id=call["id"], name=call["function"]["name"])
    s += sgl.assistant(sgl.gen("answer", tools=TOOLS, tool_choice="none", max_tokens=64))


def run(backend: Any, question: str) -> Any:
    st = agent.run(question=question, temperature=0.7, backend=backend)
    if st.error() is not None:
        raise st.error()
    for m in st.messages():
        calls = [
            f"{c['function']['name']}{c['function']['arguments']}" for c in m.get("tool_calls", [])
        ]
        print(f"{m['role']:>9}: {m['content']!r}" + (f" calls {', '.join(calls)}" if calls else ""))
    print(f"answer: {st['answer']!r}")
    print_trace_heads(st, "trace (every turn reuses the conversation before it):")
    return st


def main(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a RadixLM server (uses its chat template and parser)")
    parser.add_argument("--model-path", help="a local model to run in-process")
    parser.add_argument("--chat-template", help="a Jinja chat template that renders tools")
    parser.add_argument("--tool-call-parser", help="hermes | llama3_json | mistral")
    parser.add_argument("--question", default="What is 17 times 23?")
    parser.add_argument("--max-total-tokens", type=int, help="KV pool size (in-process only)")
    parser.add_argument("--num-threads", type=int, help="torch CPU threads (in-process only)")
    parser.add_argument("--context-length", type=int, help="override the model's (in-process)")
    args = parser.parse_args(argv)
    tools = {"tool_chat_template": args.chat_template, "tool_call_parser": args.tool_call_parser}
    if args.url:
        backend = sgl.RuntimeEndpoint(args.url, **tools)
    elif args.model_path:
        backend = sgl.EngineBackend(
            model_path=args.model_path,
            max_total_tokens=args.max_total_tokens,
            num_threads=args.num_threads,
            context_length=args.context_length,
            **tools,
        )
    else:
        parser.error("pass --model-path (a model whose chat template renders tools) or --url")
    try:
        return run(backend, args.question)
    finally:
        backend.shutdown()


if __name__ == "__main__":
    main()
