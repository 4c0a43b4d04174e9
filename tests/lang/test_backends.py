"""The DSL's real backends on the bundled stories260K model: ``EngineBackend`` (in-process),
``RuntimeEndpoint`` / ``Runtime`` (a real server process) and ``OpenAI`` (that server's /v1).

Every result is checked against the engine itself: greedy texts against ``Engine.generate``,
``select`` decisions against a hand computation from prompt logprobs fetched separately.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from radixlm_lang import choices as choices_mod
from radixlm_lang.backend.base import Prompt
from radixlm_lang.backend.engine import EngineBackend
from radixlm_lang.backend.openai import ChatPositionError, OpenAI
from radixlm_lang.backend.runtime_endpoint import Runtime, RuntimeEndpoint
from radixlm_lang.ir import SamplingParams

API_KEY = "test-key"
GREEDY = SamplingParams(max_new_tokens=24, temperature=0)
PROMPTS = [
    "Once upon a time",
    "Lily and Tom went to the park.",
    "The little dog was",
    "One day, a girl named Sue",
]
LONG_PREFIX = "Once upon a time, there was a little girl named Lily. She loved to play outside. "
SELECT_CASES = [
    ("Once upon a time, there was a", [" dog", " cat", " little girl"]),
    ("Once upon a time, there was a ", ["dog", "cat", "big house"]),  # healing at the space
    ("Tom liked to", [" play", " run away", " eat"]),
    ("The dog was very very", [" happy", " sad"]),  # first scored token is dropped
]
METHODS = [
    "token_length_normalized",
    "greedy_token_selection",
    "unconditional_likelihood_normalized",
]

Raw = Callable[[dict[str, Any]], Any]  # a raw native /generate call


# ---- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine_backend() -> Iterator[EngineBackend]:
    backend = EngineBackend(max_total_tokens=20000, num_threads=1)
    yield backend
    backend.shutdown()


@pytest.fixture(scope="module")
def engine_raw(engine_backend) -> Raw:
    """``Engine.generate`` itself, run on the backend's engine thread (while it is idle)."""

    def raw(body: dict[str, Any]) -> Any:
        kw = dict(body)
        prompt = kw.pop("text", None)
        return engine_backend.run_on_engine(lambda e: e.generate(prompt, **kw))

    return raw


@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> Iterator[Runtime]:
    log = tmp_path_factory.mktemp("lang_server") / "server.log"
    rt = Runtime(num_threads=1, max_total_tokens=20000, api_key=API_KEY, log_file=str(log))
    yield rt
    rt.shutdown()


@pytest.fixture(scope="module")
def endpoint(runtime) -> RuntimeEndpoint:
    return runtime.endpoint


@pytest.fixture(scope="module", params=["engine", "endpoint"])
def native(request) -> tuple[Any, Raw]:
    """Each native backend with a raw /generate call into the same engine."""
    if request.param == "engine":
        return request.getfixturevalue("engine_backend"), request.getfixturevalue("engine_raw")
    ep = request.getfixturevalue("endpoint")
    return ep, lambda body: ep.post("/generate", body)


@pytest.fixture(scope="module")
def reference(engine_raw) -> dict[str, str]:
    """Greedy texts of ``PROMPTS`` from ``Engine.generate``, one call each."""
    return {
        p: engine_raw({"text": p, "sampling_params": GREEDY.to_native()})["text"] for p in PROMPTS
    }


# ---- select by hand --------------------------------------------------------------------------
def hand_select(raw: Raw, prompt: str, choices: list[str], method: str) -> tuple[str, list[float]]:
    """§1.9 recomputed from full prompt logprobs: (decision, per-choice scores)."""
    n_prompt = raw({"text": prompt, "sampling_params": {"max_new_tokens": 0}})["meta_info"][
        "prompt_tokens"
    ]
    scored = []
    for c in choices:
        out = raw(
            {
                "text": prompt + c,
                "sampling_params": {"max_new_tokens": 0},
                "return_logprob": True,
                "logprob_start_len": 0,
                "return_text_in_logprobs": True,
            }
        )
        entries = out["meta_info"]["input_token_logprobs"][max(n_prompt - 2, 0) :]
        if len(entries) > 1 and prompt.endswith(entries[0][2]):  # no healing: drop it
            entries = entries[1:]
        scored.append(entries)
    means = [sum(e[0] for e in s if e[0]) / len([e for e in s if e[0]]) for s in scored]
    if method == "token_length_normalized":
        scores = means
    elif method == "unconditional_likelihood_normalized":
        scores = []
        for s in scored:
            ids = [e[1] for e in s]
            body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 0}}
            uncond = raw({**body, "return_logprob": True, "logprob_start_len": 0})
            u = [e[0] or 0.0 for e in uncond["meta_info"]["input_token_logprobs"]]
            scores.append(sum(e[0] - x for e, x in zip(s, u)) / len(s))
    else:  # greedy: position by position, padded with each choice's own mean
        width = max(len(s) for s in scored)
        rows = [[e[0] for e in s] + [m] * (width - len(s)) for s, m in zip(scored, means)]
        alive = list(range(len(choices)))
        for j in range(width):
            top = max(rows[i][j] for i in alive)
            alive = [i for i in alive if rows[i][j] >= top - 1e-6]
            if len(alive) == 1:
                break
        return choices[alive[0]], means
    best = max(range(len(choices)), key=lambda i: (scores[i], -i))
    return choices[best], scores


# ---- both native backends ----------------------------------------------------------------------
def test_generate_equals_engine(native, reference) -> None:
    backend, _ = native
    for p in PROMPTS:
        text, meta = backend.generate(Prompt(p), GREEDY)
        assert text == reference[p]
        assert meta["completion_tokens"] > 0 and meta["prompt_tokens"] > 0


def test_stream_deltas_join_to_text(native, reference) -> None:
    backend, _ = native
    chunks = list(backend.generate_stream(Prompt(PROMPTS[0]), GREEDY))
    assert len(chunks) > 1
    assert "".join(d for d, _ in chunks) == reference[PROMPTS[0]]
    assert chunks[-1][1]["finish_reason"] is not None


def test_concurrent_generate_from_16_threads(native, reference) -> None:
    backend, _ = native
    before = backend.get_server_info()
    results: dict[int, str] = {}
    barrier = threading.Barrier(16)

    def work(i: int) -> None:
        barrier.wait()
        results[i] = backend.generate(Prompt(PROMPTS[i % len(PROMPTS)]), GREEDY)[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {i: results.get(i) for i in range(16)} == {
        i: reference[PROMPTS[i % len(PROMPTS)]] for i in range(16)
    }
    if isinstance(backend, EngineBackend):  # the callers shared scheduler steps
        steps = backend.get_server_info()["forward_steps"] - before["forward_steps"]
        assert steps < 16 * GREEDY.max_new_tokens / 2


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", range(len(SELECT_CASES)))
def test_select_equals_hand_computation(native, method: str, case: int) -> None:
    backend, raw = native
    prompt, options = SELECT_CASES[case]
    decision = backend.select(Prompt(prompt), options, 0.0, getattr(choices_mod, method))
    expected, scores = hand_select(raw, prompt, options, method)
    assert decision.decision == expected
    meta = decision.meta_info
    assert len(meta["input_token_logprobs"]) == len(options)
    if prompt.endswith("very very"):
        assert all(e[0][2] == " very" and e[1][2] != " very" for e in meta["input_token_logprobs"])
    if method == "token_length_normalized":
        assert meta["normalized_prompt_logprobs"] == pytest.approx(scores, abs=1e-4)


def test_select_needs_temperature_zero(native) -> None:
    with pytest.raises(ValueError, match="temperature"):
        native[0].select(Prompt("Once"), [" a", " b"], 0.7, None)


def test_cache_prefix_then_generate_hits_cache(native) -> None:
    backend, _ = native
    params = SamplingParams(max_new_tokens=4, temperature=0)
    assert backend.flush_cache() is True
    assert backend.generate(Prompt(LONG_PREFIX + "Tom"), params)[1]["cached_tokens"] == 0
    assert backend.flush_cache() is True
    backend.cache_prefix(LONG_PREFIX)
    meta = backend.generate(Prompt(LONG_PREFIX + "One day"), params)[1]
    assert meta["cached_tokens"] > 10


def test_server_info(native) -> None:
    info = native[0].get_server_info()
    assert info["max_total_num_tokens"] > 0
    assert "stories260K" in native[0].get_model_name()


# ---- the in-process engine ---------------------------------------------------------------------
def test_engine_request_error_is_typed_and_engine_survives(engine_backend, reference) -> None:
    from radixlm.errors import RequestError

    with pytest.raises(RequestError, match="temperature"):
        engine_backend.generate(Prompt("Once"), SamplingParams(temperature=-1.0))
    assert engine_backend.generate(Prompt(PROMPTS[0]), GREEDY)[0] == reference[PROMPTS[0]]


def test_engine_abandoned_stream_is_aborted(engine_backend, reference) -> None:
    stream = engine_backend.generate_stream(Prompt(PROMPTS[1]), SamplingParams(max_new_tokens=200))
    next(stream)
    stream.close()
    assert engine_backend.generate(Prompt(PROMPTS[0]), GREEDY)[0] == reference[PROMPTS[0]]
    info = engine_backend.get_server_info()
    assert info["num_running_reqs"] == 0 and info["num_waiting_reqs"] == 0


# ---- the HTTP endpoint -------------------------------------------------------------------------
def test_endpoint_needs_the_api_key(runtime) -> None:
    with pytest.raises(RuntimeError, match="Unauthorized"):
        RuntimeEndpoint(runtime.url)
    with pytest.raises(RuntimeError, match="Unauthorized"):
        RuntimeEndpoint(runtime.url, api_key="wrong")
    assert RuntimeEndpoint(runtime.url, api_key=API_KEY).model_path == runtime.endpoint.model_path


def test_endpoint_error_status_raises_body(endpoint) -> None:
    with pytest.raises(RuntimeError, match="temperature"):
        endpoint.generate(Prompt("Once"), SamplingParams(temperature=-1.0))


def test_endpoint_chat_template_from_model_info(runtime) -> None:
    ep = RuntimeEndpoint(runtime.url, api_key=API_KEY, chat_template_name="chatml")
    assert ep.get_chat_template().name == "chatml"
    assert runtime.endpoint.get_chat_template().name == "default"


# ---- OpenAI over the same server ---------------------------------------------------------------
@pytest.fixture(scope="module")
def completion_model(runtime) -> OpenAI:
    return OpenAI("stories260K", base_url=runtime.url + "/v1", api_key=API_KEY, is_chat_model=False)


def test_openai_completion_generate(completion_model, reference) -> None:
    text, meta = completion_model.generate(Prompt(PROMPTS[0]), GREEDY)
    assert text == reference[PROMPTS[0]]
    assert meta["completion_tokens"] == GREEDY.max_new_tokens
    streamed = "".join(d for d, _ in completion_model.generate_stream(Prompt(PROMPTS[0]), GREEDY))
    assert streamed == text


def test_openai_completion_regex_goes_as_extra_body(completion_model) -> None:
    params = SamplingParams(max_new_tokens=8, temperature=0, regex="[0-9]{3}")
    assert completion_model.generate(Prompt("Tom had"), params)[0].isdigit()


def test_openai_completion_select_equals_native(completion_model, endpoint) -> None:
    for prompt, options in SELECT_CASES:
        got = completion_model.select(Prompt(prompt), options, 0.0, None)
        want = endpoint.select(Prompt(prompt), options, 0.0, None)
        assert got.decision == want.decision
        assert got.meta_info["normalized_prompt_logprobs"] == pytest.approx(
            want.meta_info["normalized_prompt_logprobs"], abs=1e-4
        )


def test_openai_chat_generate(runtime) -> None:
    chat = OpenAI("stories260K", base_url=runtime.url + "/v1", api_key=API_KEY, is_chat_model=True)
    template = chat.get_chat_template()
    user = template.role_prefix_and_suffix["user"]
    assistant_prefix = template.role_prefix_and_suffix["assistant"][0]
    messages = [{"role": "user", "content": "Once upon a time"}]
    text = user[0] + "Once upon a time" + user[1] + assistant_prefix
    out, meta = chat.generate(Prompt(text, messages), SamplingParams(max_new_tokens=8))
    assert isinstance(out, str) and meta["completion_tokens"] <= 8
    with pytest.raises(ChatPositionError):
        chat.generate(Prompt(text + "Sure:", messages), SamplingParams(max_new_tokens=8))
    with pytest.raises(NotImplementedError):
        chat.select(Prompt(text, messages), ["a", "b"], 0.0, None)


# ---- a whole program through the DSL -----------------------------------------------------------
def test_run_batch_on_engine_backend_batches_and_shares_prefix(engine_backend, engine_raw) -> None:
    import radixlm_lang as sgl

    @sgl.function
    def story(s, name):
        s += LONG_PREFIX + "Her friend was " + name + ". They went to the"
        s += sgl.gen("place", max_tokens=8, temperature=0, stop=".")
        s += ". It was" + sgl.select("mood", choices=[" fun", " scary", " big"])

    before = engine_backend.get_server_info()
    names = ["Tom", "Sue", "Max", "Ben"] * 4
    states = story.run_batch([{"name": n} for n in names], num_threads=16, backend=engine_backend)
    after = engine_backend.get_server_info()
    for name, st in zip(names, states):
        head = LONG_PREFIX + "Her friend was " + name + ". They went to the"
        body = {"text": head, "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
        want = engine_raw({**body, "sampling_params": {**body["sampling_params"], "stop": ["."]}})
        assert st["place"] == want["text"]
        assert st["mood"] in (" fun", " scary", " big")
    hits = after["prefix_cache"]["hit_tokens"] - before["prefix_cache"]["hit_tokens"]
    assert hits > len(names) * 15  # the shared prefix was served from the cache


def test_endpoint_reuses_its_connections(endpoint) -> None:
    """The HTTP backend keeps connections alive: 20 calls, streamed or not, from 4 threads,
    open at most one connection per thread."""
    from concurrent.futures import ThreadPoolExecutor

    pool = endpoint.session.get_adapter(endpoint.base_url).poolmanager
    before = sum(p.num_connections for p in pool.pools._container.values())
    body = {"text": "Once upon a time", "sampling_params": {"max_new_tokens": 2}}

    def call(i: int) -> None:
        if i % 2:
            assert list(endpoint._stream({**body, "stream": True}))
        else:
            assert endpoint.post("/generate", body)["meta_info"]["completion_tokens"] == 2

    with ThreadPoolExecutor(4) as ex:
        list(ex.map(call, range(20)))
    opened = sum(p.num_connections for p in pool.pools._container.values()) - before
    assert opened <= 4, opened
