"""The OpenAI Python SDK, unchanged, against real server processes: outputs equal the
in-process engine's greedy outputs, on the bundled model and on a tiny random model."""

from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")


def _client(server, api_key: str = "unused"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0)


def test_completions_match_engine(server, engine):
    c = _client(server)
    r = c.completions.create(
        model="stories260K", prompt="Once upon a time", max_tokens=20, temperature=0
    )
    ref = engine.generate("Once upon a time", {"temperature": 0, "max_new_tokens": 20})
    assert r.choices[0].text == ref["text"]
    assert r.usage.completion_tokens == len(ref["output_ids"])
    assert r.object == "text_completion"


def test_chat_matches_engine(server, engine):
    from radixlm.server.chat_template import render_chat, resolve_chat_template, split_stops

    msgs = [
        {"role": "system", "content": "You tell short stories."},
        {"role": "user", "content": "Tell me about a dog."},
    ]
    r = _client(server).chat.completions.create(
        model="stories260K", messages=msgs, max_tokens=24, temperature=0
    )
    template = resolve_chat_template(engine.tokenizer, None)  # the server's default
    ids = render_chat(template, engine.tokenizer, msgs)
    stops, stop_ids = split_stops(template, engine.tokenizer)
    ref = engine.generate(
        input_ids=ids,
        sampling_params={"temperature": 0, "max_new_tokens": 24, "stop": stops,
                         "stop_token_ids": stop_ids},
    )  # fmt: skip
    assert r.choices[0].message.content == ref["text"]
    assert r.usage.prompt_tokens == len(ids)


def test_completions_stream_equals_non_stream(server):
    c = _client(server)
    kw = dict(model="stories260K", prompt="Lily went", max_tokens=16, temperature=0)
    full = c.completions.create(**kw).choices[0].text
    chunks = list(c.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == full
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16


def test_chat_and_stream(server):
    c = _client(server)
    msgs = [{"role": "user", "content": "Tell me a story about a cat."}]
    r = c.chat.completions.create(model="stories260K", messages=msgs, max_tokens=16, temperature=0)
    text = r.choices[0].message.content
    assert r.choices[0].message.role == "assistant" and text
    streamed = c.chat.completions.create(
        model="stories260K", messages=msgs, max_tokens=16, temperature=0, stream=True
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices) == text


def test_n_seed_logprobs_and_cached_tokens(server):
    c = _client(server)
    prompt = "The little dog was sad because it lost its ball in the big park"
    r = c.completions.create(model="stories260K", prompt=prompt, max_tokens=8, n=2, temperature=0.9, seed=3,
                             logprobs=2)  # fmt: skip
    assert len(r.choices) == 2
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == 8 and len(lp.top_logprobs[0]) == 2
    again = c.completions.create(model="stories260K", prompt=prompt, max_tokens=8, n=2, temperature=0.9,
                                 seed=3, logprobs=2)  # fmt: skip
    assert [ch.text for ch in again.choices] == [ch.text for ch in r.choices]  # seeded
    assert again.usage.prompt_tokens_details.cached_tokens > 0
    chat = c.chat.completions.create(
        model="stories260K", messages=[{"role": "user", "content": prompt}], max_tokens=5, temperature=0,
        logprobs=True, top_logprobs=2,
    )  # fmt: skip
    content = chat.choices[0].logprobs.content
    assert len(content) == 5 and len(content[0].top_logprobs) == 2


def test_stop_and_max_completion_tokens(server):
    c = _client(server)
    r = c.completions.create(model="stories260K", prompt="Once upon a time", max_tokens=60, temperature=0,
                             stop=["."])  # fmt: skip
    assert r.choices[0].finish_reason == "stop" and "." not in r.choices[0].text
    chat = c.chat.completions.create(
        model="stories260K", messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=3,
        temperature=0,
    )  # fmt: skip
    assert chat.usage.completion_tokens == 3 and chat.choices[0].finish_reason == "length"


def test_structured_output(server):
    import json

    import jsonschema

    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 10},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
    }
    c = _client(server)
    r = c.chat.completions.create(
        model="stories260K",
        messages=[{"role": "user", "content": "A person as JSON"}],
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
        max_tokens=80,
    )
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    report = r.choices[0].model_extra["constraint"]  # how the schema was enforced
    assert report["valid"] is True and report["unenforced"] == []
    r = c.completions.create(
        model="stories260K", prompt="The code is ", max_tokens=12, extra_body={"regex": "[0-9]{4}"}
    )
    assert len(r.choices[0].text) == 4 and r.choices[0].text.isdigit()
    status, out = server.post(
        "/generate", {"text": "x", "sampling_params": {"regex": "a((", "max_new_tokens": 4}}
    )
    assert status == 400 and "regex" in out["error"]["message"]


def test_strict_schemas_are_enforced_exactly_or_refused(server):
    import json

    c = _client(server)
    unique = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True, "maxItems": 4}
    fmt = {"type": "json_schema", "json_schema": {"name": "u", "schema": unique, "strict": True}}
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(
            model="stories260K", messages=[{"role": "user", "content": "x"}], response_format=fmt
        )
    assert "/: uniqueItems" in str(e.value)  # each keyword named with its JSON pointer
    fmt["json_schema"]["strict"] = False  # best effort: decoded, and the dropped keyword named
    r = c.chat.completions.create(
        model="stories260K", messages=[{"role": "user", "content": "x"}], response_format=fmt,
        max_tokens=40, temperature=1.0,
    )  # fmt: skip
    report = r.choices[0].model_extra["constraint"]
    assert report["unenforced"] == [{"pointer": "", "keyword": "uniqueItems", "reason": ""}]
    if r.choices[0].finish_reason == "stop":
        items = json.loads(r.choices[0].message.content)
        assert report["valid"] is (len(set(items)) == len(items))
    bounded = {"type": "object", "properties": {"d": {"type": "integer", "minimum": 1,
               "maximum": 7}}, "required": ["d"]}  # fmt: skip
    fmt = {"type": "json_schema", "json_schema": {"name": "b", "schema": bounded, "strict": True}}
    r = c.chat.completions.create(
        model="stories260K", messages=[{"role": "user", "content": "x"}], response_format=fmt,
        max_tokens=20,
    )  # fmt: skip
    assert 1 <= json.loads(r.choices[0].message.content)["d"] <= 7


def test_errors_in_openai_shape(server):
    c = _client(server)
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="stories260K", prompt="x", temperature=-1)
    assert "temperature" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="stories260K", messages=[])
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(
            model="stories260K", messages=[{"role": "wizard", "content": "x"}]
        )
    assert "role" in str(e.value)


@pytest.fixture(scope="module")
def tiny(start_server, tiny_models):
    return start_server("--model-path", tiny_models["qwen2"], "--served-model-name", "tiny")


def test_tiny_random_model_matches_engine(tiny, tiny_models):
    import radixlm

    prompts = ["Once upon a time", "Tom and Sue", "A bird sat"]
    with radixlm.Engine(tiny_models["qwen2"], max_total_tokens=4000, num_threads=1) as e:
        refs = e.generate(prompts, {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True})
    c = _client(tiny)
    assert c.models.list().data[0].id == "tiny"
    r = c.completions.create(model="tiny", prompt=prompts, max_tokens=12, temperature=0,
                             extra_body={"ignore_eos": True})  # fmt: skip
    assert [ch.text for ch in sorted(r.choices, key=lambda ch: ch.index)] == [
        x["text"] for x in refs
    ]
