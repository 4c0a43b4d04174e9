"""Smoke tests of ``examples/dsl_*.py``: each example's ``main(argv)`` runs in-process on the
bundled stories260K model (a small KV pool, one torch thread) and its results are checked for
what the example claims: valid structured outputs, prefix reuse, fork/join and streaming."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import jsonschema
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ARGV = ["--max-total-tokens", "8000", "--num-threads", "1"]
NAMES = [
    "react_agent",
    "json_extraction",
    "few_shot_select",
    "tree_of_thought",
    "multi_turn_chat",
    "tool_agent",
]
TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"


def load(name: str) -> ModuleType:
    if str(EXAMPLES) not in sys.path:  # the examples import their shared _dsl_cli.py
        sys.path.insert(0, str(EXAMPLES))
    path = EXAMPLES / f"dsl_{name}.py"
    spec = importlib.util.spec_from_file_location(f"dsl_example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def summary_lines(state) -> list[str]:
    return [line for line in state.trace_text().splitlines() if line.startswith("#")]


@pytest.mark.parametrize("name", NAMES)
def test_example_is_documented_and_takes_url(name: str) -> None:
    module = load(name)
    assert module.__doc__ and f"python examples/dsl_{name}.py --url" in module.__doc__
    with pytest.raises(SystemExit) as info:
        module.main(["--help"])
    assert info.value.code == 0


def test_react_agent(capsys) -> None:
    module = load("react_agent")
    st = module.main(ARGV)
    assert st.error() is None
    steps = [e for e in st.trace() if e["kind"] == "select"]
    args = [e for e in st.trace() if e["name"] == "arg"]
    assert 1 <= len(steps) == len(args) <= 3
    assert steps[0]["output"] in ("calculator", "lookup")  # the first step must use a tool
    for step, arg in zip(steps, args):
        assert step["output"] in module.TOOLS
        assert re.fullmatch(module.ARG_REGEX[step["output"]], arg["output"])
    if steps[-1]["output"] == "finish":
        assert st["answer"] == args[-1]["output"]
    else:
        assert st["answer"] is None and len(steps) == 3
    tool_calls = sum(s["output"] != "finish" for s in steps)
    assert st.text().count("Observation:") == module.EXAMPLE.count("Observation:") + tool_calls
    assert all(e["cached_tokens"] > 0 for e in st.trace()[1:])  # the transcript is reused
    assert "answer:" in capsys.readouterr().out


def test_json_extraction() -> None:
    module = load("json_extraction")
    cards = module.main(ARGV)
    assert len(cards) == len(module.TEXTS)
    for card in cards:
        jsonschema.validate(card, module.SCHEMA)
        json.loads(json.dumps(card))


def test_few_shot_select_reuses_prefix(capsys) -> None:
    module = load("few_shot_select")
    states = module.main(ARGV)
    assert len(states) == len(module.SENTENCES)
    for st in states:
        assert st.error() is None
        assert st["label"] in module.LABELS
        assert st.text().endswith("Sentiment: " + st["label"] + "\n")
    metas = [st.get_meta_info("label") for st in states]
    # run_batch prefilled the few-shot block once: every item (later ones included) hits it.
    assert all(m["cached_tokens"] > m["prompt_tokens"] * 0.7 for m in metas[1:])
    out = capsys.readouterr()
    assert "cached" in out.out and "select [label]" in out.out


def test_tree_of_thought_forks_and_joins() -> None:
    module = load("tree_of_thought")
    st = module.main(ARGV)
    assert st.error() is None
    details = st["detail"]
    assert isinstance(details, list) and len(details) == 3
    assert all(isinstance(d, str) and d for d in details)
    trace = st.trace()
    assert [e["kind"] for e in trace].count("cache_prefix") == 1
    branch_calls = [e for e in trace if e["name"] == "detail"]
    assert len({e["sid"] for e in branch_calls}) == 3  # one executor per branch
    fork_prefix = next(e["prompt"] for e in trace if e["kind"] == "cache_prefix")
    assert all(e["prompt"].startswith(fork_prefix) for e in branch_calls)
    assert all(e["cached_tokens"] > 0 for e in branch_calls)
    assert all(d.strip() in st.text() for d in details)  # the parent appended the expansions
    assert isinstance(st["summary"], str)
    assert sum("cache_prefix" in line for line in summary_lines(st)) == 1


def test_multi_turn_chat_messages_and_streaming() -> None:
    module = load("multi_turn_chat")
    st, streamed, chunks = module.main(ARGV)
    assert st.error() is None and streamed.error() is None
    roles = [m["role"] for m in st.messages()]
    assert roles == ["system"] + ["user", "assistant"] * 3
    assert all(a != b for a, b in zip(roles, roles[1:]))  # roles alternate
    answers = [m["content"] for m in st.messages() if m["role"] == "assistant"]
    assert answers == [st[f"answer{i}"].strip() for i in range(3)]
    assert all(e["cached_tokens"] > 0 for e in st.trace()[1:])  # later turns hit the cache
    assert chunks and "".join(chunks) == streamed["story"]
    assert streamed.messages()[-1]["content"] == ("Once upon a time," + streamed["story"]).strip()


def test_tool_agent_loops_model_tool_model(tiny_models, capsys) -> None:
    """On a tiny random qwen2 with the hermes test template: the first turn must call, so at
    least one calculator call runs; each result answers its call by id; the loop ends with an
    answer; every turn after the first reuses the conversation from the cache."""
    module = load("tool_agent")
    argv = [
        "--model-path",
        tiny_models["qwen2"],
        "--chat-template",
        str(TEMPLATES / "hermes.jinja"),
    ]
    st = module.main([*argv, "--context-length", "4096", *ARGV])
    assert st.error() is None
    msgs = st.messages()
    assert [m["role"] for m in msgs[:3]] == ["system", "user", "assistant"]
    assert msgs[-1]["role"] == "assistant" and "tool_calls" not in msgs[-1]
    calls = {c["id"]: c for m in msgs for c in m.get("tool_calls", [])}
    results = [m for m in msgs if m["role"] == "tool"]
    assert calls and len(results) == len(calls)
    for r in results:
        call = calls[r["tool_call_id"]]
        assert r["name"] == "calculator"
        args = json.loads(call["function"]["arguments"])
        jsonschema.validate(args, module.TOOLS[0]["function"]["parameters"])
        assert json.loads(r["content"]) == module.run_tool(call)
    assert isinstance(st["answer"], str)
    assert all(e["cached_tokens"] > 0 for e in st.trace()[1:])
    assert "answer:" in capsys.readouterr().out
