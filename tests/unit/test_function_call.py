"""Tool calling without a model: request validation, the three formats' parsers (including
malformed outputs), streaming, grammars (checked with llguidance on real token sequences) and
templates rendering tools exactly as transformers does."""

from __future__ import annotations

import json
import os

import pytest

from radixlm.errors import RequestError
from radixlm.function_call.formats import FORMATS, detect_format, get_format
from radixlm.function_call.streaming import ToolStream
from radixlm.function_call.tools import ToolSpecError, parse_tool_request
from radixlm.server.chat_template import ChatTemplate, render_text

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")
TEMPLATES = os.path.join(FIXTURES, "chat_templates")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"$ref": "#/$defs/Unit"}},
            "required": ["city"],
            "$defs": {"Unit": {"enum": ["c", "f"]}},
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
TOOLS = [WEATHER, ADD]

# Two calls in each format, as the model family writes them.
OUTPUTS = {
    "hermes": (
        "Let me check.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    ),
    "llama3_json": (
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}; '
        '{"name": "add", "parameters": {"a": 1, "b": 2}}'
    ),
    "mistral": (
        'Let me check.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", '
        '"unit": "c"}}, {"name": "add", "arguments": {"a": 1, "b": 2}}]'
    ),
}
CONTENT = {"hermes": "Let me check.", "llama3_json": None, "mistral": "Let me check."}


# ---- requests ------------------------------------------------------------------------------
def test_tool_request_modes_and_legacy_mapping():
    assert parse_tool_request({}) is None
    assert parse_tool_request({"tools": TOOLS}).mode == "auto"
    req = parse_tool_request({"tools": TOOLS, "tool_choice": "required"})
    assert (
        req.mode == "required"
        and req.parallel
        and [t.name for t in req.allowed()]
        == [
            "get_weather",
            "add",
        ]
    )
    named = parse_tool_request(
        {
            "tools": TOOLS,
            "tool_choice": {"type": "function", "function": {"name": "add"}},
            "parallel_tool_calls": False,
        }  # fmt: skip
    )
    assert named.mode == "named" and [t.name for t in named.allowed()] == ["add"]
    assert not named.parallel
    legacy = parse_tool_request({"functions": [ADD["function"]], "function_call": {"name": "add"}})
    assert legacy.legacy and legacy.mode == "named" and legacy.name == "add"
    assert not parse_tool_request({"tools": TOOLS, "tool_choice": "none"}).active


@pytest.mark.parametrize(
    "body,param,message",
    [
        ({"tools": {"x": 1}}, "tools", "must be a list"),
        ({"tools": [{"type": "retrieval"}]}, "tools", "function tools are the only kind"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools", "letters"),
        ({"tools": [ADD, ADD]}, "tools", "a second tool named 'add'"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
            "tools",
            "JSON schema of an object",
        ),
        ({"tools": TOOLS, "tool_choice": "always"}, "tool_choice", "must be"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "not among the tools",
        ),
        ({"tool_choice": "required"}, "tool_choice", "needs a non-empty tools list"),
        ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls", "true or false"),
        ({"tools": TOOLS, "functions": [ADD["function"]]}, "functions", "either"),
    ],
)
def test_tool_request_errors_name_the_field(body, param, message):
    with pytest.raises(ToolSpecError, match=message) as e:
        parse_tool_request(body)
    assert e.value.param == param


# ---- parsers -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FORMATS))
def test_parse_two_calls(name):
    parsed = get_format(name).parse(OUTPUTS[name])
    assert parsed.content == CONTENT[name]
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [
        ("get_weather", {"city": "Paris", "unit": "c"}),
        ("add", {"a": 1, "b": 2}),
    ]
    assert len({c.id for c in parsed.calls}) == 2 and all(
        c.id.startswith("call_") for c in parsed.calls
    )


@pytest.mark.parametrize(
    "name,text",
    [
        ("hermes", 'Sure <tool_call>\n{"name": "add", "arguments": {"a": 1\n</tool_call>'),
        ("hermes", '<tool_call>\n{"arguments": {"a": 1}}\n</tool_call>'),  # no name
        ("hermes", '<tool_call>\n{"name": "add", "arguments": {"a": 1}}'),  # left open
        ("hermes", '<tool_call>\n{"name": "add", "arguments": [1]}\n</tool_call>'),
        ("llama3_json", '{"name": "add", "parameters": {"a": 1}'),  # truncated
        ("llama3_json", '{"name": "add", "parameters": {"a": 1}} and then some text'),
        ("mistral", "[TOOL_CALLS][{'name': 'add'}]"),
        ("mistral", '[TOOL_CALLS]add[ARGS]{"a": '),
    ],
)
def test_malformed_calls_stay_content(name, text):
    parsed = get_format(name).parse(text)
    assert parsed.calls == () and parsed.content == text.strip()


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_plain_text_is_content(name):
    parsed = get_format(name).parse("  Hello there. ")
    assert parsed == type(parsed)("Hello there.", ())


def test_mistral_args_form_and_arguments_as_string():
    parsed = get_format("mistral").parse('[TOOL_CALLS]add[ARGS]{"a": 1, "b": 2}')
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [("add", {"a": 1, "b": 2})]
    parsed = get_format("hermes").parse(
        '<tool_call>\n{"name": "add", "arguments": "{\\"a\\": 3}"}\n</tool_call>'
    )
    assert json.loads(parsed.calls[0].arguments) == {"a": 3}


def test_detect_format_from_templates():
    for name in FORMATS:
        with open(os.path.join(TEMPLATES, f"{name}.jinja")) as f:
            assert detect_format(f.read()) is FORMATS[name]
    assert detect_format("{{ messages }}") is None and detect_format(None) is None
    with pytest.raises(KeyError, match="unknown tool call parser"):
        get_format("pythonic")
    assert get_format("qwen25") is FORMATS["hermes"]


# ---- streaming -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize("step", [1, 3, 17])
def test_stream_equals_parse(name, step):
    """Fed the text a few characters at a time, the stream sends the same content and calls as
    one parse of the whole text; no content is sent from inside a call."""
    fmt, text = get_format(name), OUTPUTS[name]
    stream, content, calls = ToolStream(fmt), "", []
    for end in range(step, len(text) + step, step):
        ev = stream.feed(text[:end], final=end >= len(text))
        content += ev.content
        calls += ev.calls
        assert fmt.trigger not in content and '"name"' not in content
    parsed = fmt.parse(text)
    assert content.strip() == (parsed.content or "")
    assert [(c.name, c.arguments) for c in calls] == [(c.name, c.arguments) for c in parsed.calls]


def test_stream_sends_hermes_calls_as_they_close():
    stream = ToolStream(get_format("hermes"))
    first_close = OUTPUTS["hermes"].index("</tool_call>") + len("</tool_call>")
    ev = stream.feed(OUTPUTS["hermes"][: first_close + 2], final=False)
    assert [c.name for c in ev.calls] == ["get_weather"] and ev.content == "Let me check.\n"


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_stream_without_calls_sends_everything(name):
    text = "The answer is <tool but not a call {x}"
    stream, content = ToolStream(get_format(name)), ""
    for end in range(1, len(text) + 1):
        content += stream.feed(text[:end], final=end == len(text)).content
    assert content == text


# ---- grammars ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def matcher_for():
    llguidance = pytest.importorskip("llguidance")
    from radixlm.constrained.llguidance_backend import tokenizer_json
    from radixlm.tokenizer import load_tokenizer

    tok = load_tokenizer(os.path.join(FIXTURES, "gpt2"))
    ll_tok = llguidance.LLTokenizer(tokenizer_json(tok))

    def accepts(grammar: str, text: str) -> bool:
        m = llguidance.LLMatcher(ll_tok, llguidance.grammar_from("lark", grammar))
        ok = all(m.consume_token(t) for t in tok.encode(text, add_special_tokens=False))
        return ok and m.is_accepting()

    return accepts


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_required_grammar_accepts_valid_calls_only(name, matcher_for):
    fmt = get_format(name)
    text = OUTPUTS[name]
    if name == "llama3_json":
        text = text[len("<|python_tag|>") :]  # the grammar writes bare calls
    start = text.find(fmt.trigger) if name != "llama3_json" else 0
    calls_only = text[start:]
    required = parse_tool_request({"tools": TOOLS, "tool_choice": "required"})
    grammar = fmt.grammar(required)
    assert matcher_for(grammar, calls_only)
    assert not matcher_for(grammar, calls_only.replace('"c"', '"kelvin"'))  # enum via $ref
    assert not matcher_for(grammar, calls_only.replace('"a": 1', '"a": "1"'))  # type
    assert not matcher_for(grammar, "I will not call anything.")
    single = parse_tool_request(
        {"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False}
    )
    assert not matcher_for(fmt.grammar(single), calls_only)  # two calls, one allowed
    named = parse_tool_request(
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "add"}}}
    )
    assert not matcher_for(fmt.grammar(named), calls_only)  # get_weather is not allowed


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_auto_grammar_is_free_until_the_trigger(name, matcher_for):
    """``auto``: any text without a call, or text and then calls that must be well-formed
    from the trigger on (a lazy grammar)."""
    fmt = get_format(name)
    auto = fmt.grammar(parse_tool_request({"tools": TOOLS, "tool_choice": "auto"}))
    text = OUTPUTS[name]
    assert matcher_for(auto, text)
    assert matcher_for(auto, "No call needed: 1 + 2 = 3.")
    assert matcher_for(auto, "")
    assert not matcher_for(auto, text.replace('"a": 1', '"a": "1"'))
    assert not matcher_for(auto, text.replace('"add"', '"sub"'))
    if name != "llama3_json":
        assert not matcher_for(auto, f"Sure. {fmt.trigger} no json here")
    else:  # a call is the whole output: text may not start like one
        assert not matcher_for(auto, '{"text": 1}')
        assert not matcher_for(auto, "<|python_tag|>plain text")
    single = parse_tool_request(
        {"tools": TOOLS, "tool_choice": "auto", "parallel_tool_calls": False}
    )
    assert not matcher_for(fmt.grammar(single), text)  # two calls, one allowed


def test_special_trigger_tokens_are_written_as_tokens():
    """When the trigger is one special token, grammars name the token (``<[id]>``): the model
    must emit it, as trained, not spell it; other literals stay text."""
    import transformers

    from radixlm.function_call.literals import token_literal

    tok = transformers.AutoTokenizer.from_pretrained(os.path.join(FIXTURES, "gpt2"))
    tok.add_tokens(["<tool_call>"], special_tokens=True)
    tid = tok.convert_tokens_to_ids("<tool_call>")
    lit = token_literal(tok)
    assert lit("<tool_call>") == f"<[{tid}]>" and lit("</tool_call>") == '"</tool_call>"'
    req = parse_tool_request({"tools": TOOLS, "tool_choice": "auto"})
    grammar = get_format("hermes").grammar(req, lit)
    assert f"<[{tid}]>" in grammar and "lead" not in grammar


# ---- templates -----------------------------------------------------------------------------
HISTORY = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Weather in Paris, and 1 + 2?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
            },
        ],  # fmt: skip
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    {"role": "tool", "tool_call_id": "call_2", "content": "3"},
    {"role": "user", "content": "Thanks. And in Rome?"},
]


def _hf_messages(messages):
    """The same history in the shape Hugging Face documents for templates: call arguments as
    mappings, no null content."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("content") is None:
            m["content"] = ""
        if "tool_calls" in m:
            m["tool_calls"] = [
                {**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
                for c in m["tool_calls"]
            ]  # fmt: skip
        out.append(m)
    return out


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_templates_render_tools_as_transformers_does(name):
    transformers = pytest.importorskip("transformers")
    with open(os.path.join(TEMPLATES, f"{name}.jinja")) as f:
        source = f.read()
    tok = transformers.AutoTokenizer.from_pretrained(os.path.join(FIXTURES, "gpt2"))
    special = {"bos_token": tok.bos_token, "eos_token": tok.eos_token}
    ours = render_text(
        ChatTemplate(name, source), HISTORY, tools=TOOLS, special_tokens={**special, "unk_token": "", "pad_token": ""}
    )  # fmt: skip
    theirs = tok.apply_chat_template(
        _hf_messages(HISTORY), tools=TOOLS, chat_template=source, tokenize=False,
        add_generation_prompt=True,
    )  # fmt: skip
    assert ours == theirs
    assert "get_weather" in ours and '"a": 1' in ours and "Rome" in ours


def test_history_errors_name_the_message():
    t = ChatTemplate("hermes", open(os.path.join(TEMPLATES, "hermes.jinja")).read())
    bad = [
        ([{"role": "tool", "content": "x"}], "tool_call_id"),
        ([{"role": "user", "content": "x", "tool_calls": HISTORY[2]["tool_calls"]}], "only assistant"),
        ([{"role": "assistant", "content": None, "tool_calls": {"id": "x"}}], "must be a list"),
        ([{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{oops"}}]}], "JSON object"),
    ]  # fmt: skip
    for messages, message in bad:
        with pytest.raises(RequestError, match=message):
            render_text(t, messages)


def test_sdk_shaped_assistant_messages_render():
    """What the OpenAI SDK sends back when a response message is appended to the history:
    null fields, and an empty tool_calls list from some clients."""
    t = ChatTemplate("hermes", open(os.path.join(TEMPLATES, "hermes.jinja")).read())
    sdk = {"role": "assistant", "content": "Hi", "refusal": None, "audio": None,
           "function_call": None, "annotations": [], "tool_calls": []}  # fmt: skip
    text = render_text(t, [{"role": "user", "content": "x"}, sdk])
    assert "Hi" in text and "<tool_call>" not in text.split("</tools>")[-1]
    with_calls = {**sdk, "content": None, "tool_calls": HISTORY[2]["tool_calls"]}
    assert '"name": "add"' in render_text(t, [{"role": "user", "content": "x"}, with_calls])
