"""Chat templates: exact renderings, resolution order, BOS handling, message validation."""

from __future__ import annotations

import pytest

from radixlm.config import BUNDLED_MODEL
from radixlm.errors import ConfigError, RequestError
from radixlm.server.chat_template import (
    TEMPLATES,
    ChatTemplate,
    render_chat,
    render_text,
    resolve_chat_template,
    split_stops,
)
from radixlm.tokenizer import load_tokenizer

CONVO = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {
        "role": "user",
        "content": [{"type": "text", "text": "Tell"}, {"type": "text", "text": "a story"}],
    },
]
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": ""}
CHATML = (
    "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nTell\na story<|im_end|>\n"
    "<|im_start|>assistant\n"
)
EXPECTED = {
    "chatml": CHATML,
    "qwen": CHATML,
    "llama-2-chat": (
        "<s>[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Tell\na story "
        "[/INST]"
    ),
    "llama-3-instruct": (
        "<s><|start_header_id|>system<|end_header_id|>\n\nBe kind.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nTell\na story<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "mistral": "<s>[INST] Be kind.\n\nHi [/INST]Hello!</s>[INST] Tell\na story [/INST]",
    "plain": "System: Be kind.\nUser: Hi\nAssistant: Hello!\nUser: Tell\na story\nAssistant:",
}
# A Hugging Face-style template (loop variables, raise_exception, generation blocks).
HF_STYLE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('bad role') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{{ '<|assistant|>\n' + message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(BUNDLED_MODEL)


@pytest.fixture
def tok_with_template():
    t = load_tokenizer(BUNDLED_MODEL)
    t.chat_template = HF_STYLE
    return t


def test_registry_is_complete():
    assert set(TEMPLATES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_named_templates_render_exactly(name):
    assert render_text(TEMPLATES[name], CONVO, special_tokens=SPECIAL) == EXPECTED[name]


def test_plain_without_generation_prompt_and_developer_role():
    msgs = [{"role": "developer", "content": "Rules."}, {"role": "user", "content": "Hi"}]
    assert render_text(TEMPLATES["plain"], msgs, add_generation_prompt=False) == (
        "System: Rules.\nUser: Hi\n"
    )
    assert TEMPLATES["plain"].stop == ("\nUser:", "\nSystem:")


@pytest.mark.parametrize(
    "name, expected_end",
    [
        ("plain", "Assistant: Once upon"),
        ("chatml", "<|im_start|>assistant\nOnce upon"),
        ("llama-3-instruct", "<|start_header_id|>assistant<|end_header_id|>\n\nOnce upon"),
        ("llama-2-chat", "[/INST] Once upon"),
    ],
)
def test_continue_final_message(name, expected_end):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Once upon "}]
    text = render_text(
        TEMPLATES[name],
        msgs,
        add_generation_prompt=False,
        continue_final_message=True,
        special_tokens=SPECIAL,
    )
    assert text.endswith(expected_end)


def test_resolution_order(tok, tok_with_template, tmp_path):
    assert resolve_chat_template(tok, None) == TEMPLATES["plain"]  # no template: fallback
    own = resolve_chat_template(tok_with_template, None)
    assert (own.name, own.source, own.stop, own.includes_bos) == (
        "tokenizer",
        HF_STYLE,
        ("<|end|>",),
        True,
    )
    assert resolve_chat_template(tok_with_template, "chatml") == TEMPLATES["chatml"]
    path = tmp_path / "my.jinja"
    path.write_text(TEMPLATES["chatml"].source)
    from_file = resolve_chat_template(tok, str(path))
    assert (from_file.name, from_file.stop, from_file.includes_bos) == (
        "my.jinja",
        ("<|im_end|>",),
        False,
    )
    with pytest.raises(ConfigError, match="neither a known name"):
        resolve_chat_template(tok, "no-such-template")
    path.write_text("{% for %}")
    with pytest.raises(ConfigError, match="does not compile"):
        resolve_chat_template(tok, str(path))


def test_tokenizer_template_matches_transformers(tok_with_template):
    msgs = CONVO[1:3] + [{"role": "user", "content": "Go"}]
    ours = render_text(
        resolve_chat_template(tok_with_template, None),
        msgs,
        special_tokens={"bos_token": "<s>", "eos_token": "</s>"},
    )
    theirs = tok_with_template.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert ours == theirs


def test_bos_is_never_doubled(tok, tok_with_template):
    plain = render_chat(TEMPLATES["plain"], tok, CONVO)
    assert plain == tok.encode(EXPECTED["plain"])  # the tokenizer adds the one BOS
    for template, t in [
        (TEMPLATES["llama-2-chat"], tok),
        (TEMPLATES["mistral"], tok),
        (resolve_chat_template(tok_with_template, None), tok_with_template),
        # the text starts with BOS although the template does not declare it
        (ChatTemplate("lit", "<s>{{ messages[0].content }}"), tok),
    ]:
        ids = render_chat(template, t, CONVO[1:2])
        assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id, template.name


def test_split_stops(tok):
    # not a token of this vocabulary: matched as text
    assert split_stops(TEMPLATES["chatml"], tok) == (["<|im_end|>"], [])
    # a special token is matched by id (its text is skipped when detokenizing)
    assert split_stops(ChatTemplate("x", "", ("</s>", "\nUser:")), tok) == (["\nUser:"], [2])
    assert split_stops(TEMPLATES["plain"], None) == (["\nUser:", "\nSystem:"], [])


@pytest.mark.parametrize(
    "messages, needle",
    [
        (None, "messages must be a non-empty list"),
        ([], "messages must be a non-empty list"),
        (["hi"], "messages[0] must be an object"),
        ([{"role": "bot", "content": "x"}], "messages[0].role must be one of"),
        ([{"content": "x"}], "messages[0].role must be a string"),
        ([{"role": ["user"], "content": "x"}], "messages[0].role must be a string"),
        ([{"role": "tool", "content": "x"}], "messages[0].tool_call_id must be the id"),
        ([{"role": "user", "content": 5}], "messages[0].content must be a string or a list"),
        ([{"role": "user", "content": None}], "messages[0].content must be"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "part type(s) ['image_url']; only 'text'",
        ),
        ([{"role": "user", "content": [{"type": "text"}]}], "messages[0].content[0].text"),
        ([{"role": "user", "content": ["x"]}], "messages[0].content[0] must be an object"),
        (
            [{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}],
            "messages[0].tool_calls[0].function must be an object with a string name",
        ),
    ],
)
def test_bad_messages(tok, messages, needle):
    with pytest.raises(RequestError) as info:
        render_chat(TEMPLATES["chatml"], tok, messages)
    assert needle in str(info.value)


def test_other_request_errors(tok):
    user = [{"role": "user", "content": "Hi"}]
    with pytest.raises(RequestError, match="last message to be assistant"):
        render_text(
            TEMPLATES["plain"], user, add_generation_prompt=False, continue_final_message=True
        )
    with pytest.raises(RequestError, match="cannot both be true"):
        render_text(TEMPLATES["plain"], user, continue_final_message=True)
    with pytest.raises(RequestError, match="must not set 'messages'"):
        render_text(TEMPLATES["chatml"], user, chat_template_kwargs={"messages": []})
    with pytest.raises(RequestError, match="alternating"):
        render_chat(TEMPLATES["llama-2-chat"], tok, user + user)
    with pytest.raises(RequestError, match="at least one user message"):
        render_chat(TEMPLATES["mistral"], tok, [{"role": "system", "content": "x"}])
    with pytest.raises(RequestError, match="runs without one"):
        render_chat(TEMPLATES["plain"], None, user)
    # Jinja errors (here an undefined call) become RequestErrors naming the template
    with pytest.raises(RequestError, match="chat template 'broken' rejected"):
        render_text(ChatTemplate("broken", "{{ nope() }}"), user)


def test_chat_template_kwargs_reach_the_template(tok):
    t = ChatTemplate("k", "{% if flag %}F{% endif %}{{ messages[0].content }}")
    user = [{"role": "user", "content": "Hi"}]
    assert render_text(t, user, chat_template_kwargs={"flag": True}) == "FHi"
    assert render_text(t, user) == "Hi"
