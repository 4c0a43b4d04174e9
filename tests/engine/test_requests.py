"""Request-level behaviour of the Engine: stop conditions, n > 1, seeds, bad input."""

from __future__ import annotations

import pytest

from radixlm.errors import RequestError

PROMPT = "Once upon a time"
# Greedy continuation of PROMPT by stories260K (see the golden fixture).
CONTINUATION = ", there was a little girl named Lily. She loved to play outside in the park."


def test_stop_string_trimmed_and_reported(make_engine):
    engine = make_engine()
    r = engine.generate(PROMPT, {"temperature": 0, "max_new_tokens": 40, "stop": ["Lily"]})
    assert r["text"] == ", there was a little girl named "
    assert r["meta_info"]["finish_reason"] == {"type": "stop", "matched": "Lily"}


def test_no_stop_trim_keeps_the_stop_string(make_engine):
    engine = make_engine()
    r = engine.generate(
        PROMPT, {"temperature": 0, "max_new_tokens": 40, "stop": "Lily", "no_stop_trim": True}
    )
    assert r["text"] == ", there was a little girl named Lily"


def test_earliest_of_several_stop_strings_wins(make_engine):
    engine = make_engine()
    r = engine.generate(PROMPT, {"temperature": 0, "max_new_tokens": 40, "stop": ["park", "girl"]})
    assert r["meta_info"]["finish_reason"]["matched"] == "girl"
    assert r["text"] == ", there was a little "


def test_stop_token_ids(make_engine):
    engine = make_engine()
    ids = engine.tokenizer.encode(PROMPT)
    full = engine.generate(input_ids=ids, sampling_params={"temperature": 0, "max_new_tokens": 20})
    stop_tok = full["output_ids"][4]
    r = engine.generate(
        input_ids=ids,
        sampling_params={"temperature": 0, "max_new_tokens": 20, "stop_token_ids": [stop_tok]},
    )
    assert r["output_ids"] == full["output_ids"][:5]
    assert r["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_tok}


def test_eos_stops_unless_ignore_eos(make_engine):
    engine = make_engine()
    eos = 2
    # logit_bias forces EOS as the third token.
    bias = {"temperature": 0, "max_new_tokens": 10, "logit_bias": {str(eos): 0.0}}
    base = engine.generate(PROMPT, {**bias})
    forced = engine.generate(
        PROMPT, {"temperature": 0, "max_new_tokens": 10, "logit_bias": {eos: 100.0}}
    )
    assert forced["output_ids"] == [eos]
    assert forced["meta_info"]["finish_reason"] == {"type": "stop", "matched": eos}
    assert forced["text"] == ""
    ignored = engine.generate(
        PROMPT,
        {"temperature": 0, "max_new_tokens": 4, "logit_bias": {eos: 100.0}, "ignore_eos": True},
    )
    assert ignored["output_ids"] == [eos] * 4
    assert base["meta_info"]["completion_tokens"] == 10


def test_min_new_tokens_blocks_eos(make_engine):
    engine = make_engine()
    r = engine.generate(
        PROMPT,
        {"temperature": 0, "max_new_tokens": 6, "min_new_tokens": 3, "logit_bias": {2: 100.0}},
    )
    assert 2 not in r["output_ids"][:3]
    assert r["output_ids"][3] == 2 and len(r["output_ids"]) == 4


def test_n_samples_are_distinct_and_seeded_runs_reproducible(make_engine):
    engine = make_engine()
    params = {"temperature": 1.0, "max_new_tokens": 16, "n": 4, "sampling_seed": 7}
    a = engine.generate(PROMPT, params)
    b = engine.generate(PROMPT, params)
    assert isinstance(a, list) and len(a) == 4
    assert [r["output_ids"] for r in a] == [r["output_ids"] for r in b]
    assert len({tuple(r["output_ids"]) for r in a}) > 1
    assert len({r["meta_info"]["id"] for r in a}) == 4


def test_seeded_sample_independent_of_batch(make_engine):
    engine = make_engine()
    params = {"temperature": 0.9, "top_p": 0.9, "max_new_tokens": 20, "sampling_seed": 3}
    alone = engine.generate(PROMPT, params)["output_ids"]
    batch = engine.generate(
        ["Lily went", PROMPT, "The dog"], [{"max_new_tokens": 5}, params, params]
    )
    assert batch[1]["output_ids"] == alone


def test_top_k_one_is_greedy(make_engine):
    engine = make_engine()
    greedy = engine.generate(PROMPT, {"temperature": 0, "max_new_tokens": 20})
    topk1 = engine.generate(PROMPT, {"temperature": 1.5, "top_k": 1, "max_new_tokens": 20})
    assert greedy["output_ids"] == topk1["output_ids"]


def test_penalties_change_output(make_engine):
    engine = make_engine()
    base = engine.generate(PROMPT, {"temperature": 0, "max_new_tokens": 40})["output_ids"]
    pen = engine.generate(
        PROMPT, {"temperature": 0, "max_new_tokens": 40, "frequency_penalty": 2.0}
    )["output_ids"]
    assert pen != base
    # the greedy run repeats tokens; the frequency-penalised run repeats fewer
    assert len(set(pen)) > len(set(base))


BAD_INPUTS = [
    ({"prompt": ""}, "empty"),
    ({"input_ids": []}, "empty"),
    ({"input_ids": [1, 2, 99999]}, "outside the vocabulary"),
    ({"prompt": "x " * 600}, "shorten the prompt"),
    ({"prompt": ["Lily", "x " * 600]}, "shorten the prompt"),  # all or nothing
    ({"sampling_params": {"max_new_tokens": -1}}, "max_new_tokens"),
    ({"sampling_params": {"temperature": -0.5}}, "temperature"),
    ({"sampling_params": {"top_p": 0.0}}, "top_p"),
    ({"sampling_params": {"top_p": 1.5}}, "top_p"),
    ({"sampling_params": {"top_k": 0}}, "top_k"),
    ({"sampling_params": {"tempreature": 0.5}}, "unknown sampling parameter"),
    ({"sampling_params": {"temperature": "hot"}}, "temperature"),
    ({"sampling_params": {"max_new_tokens": "10"}}, "max_new_tokens"),
    ({"sampling_params": "greedy"}, "sampling_params"),
    ({"prompt": 42}, "prompt"),
    ({"prompt": ["ok", 3]}, "prompt"),
    ({"prompt": ["a", "b"], "sampling_params": [{}]}, "2 prompts"),
    ({"return_logprob": "yes"}, "return_logprob"),
    ({"logprob_start_len": -3, "return_logprob": True}, "logprob_start_len"),
]


@pytest.mark.parametrize("kwargs, message", BAD_INPUTS)
def test_bad_input_is_a_request_error_and_engine_keeps_serving(kwargs, message, make_engine):
    engine = make_engine()
    call = {"prompt": PROMPT, **kwargs}
    if "input_ids" in kwargs:
        call.pop("prompt")
    with pytest.raises(RequestError, match=message):
        engine.generate(**call)
    assert engine.scheduler.num_live == 0
    engine.scheduler.check_memory_invariants()
    r = engine.generate(PROMPT, {"temperature": 0, "max_new_tokens": 8})
    assert r["meta_info"]["completion_tokens"] == 8


def test_duplicate_rid_rejected(make_engine):
    engine = make_engine()
    stream = engine.generate(PROMPT, {"max_new_tokens": 5}, stream=True, rid="same")
    next(stream)
    with pytest.raises(RequestError, match="already in use"):
        engine.generate(PROMPT, {"max_new_tokens": 5}, rid="same")
    list(stream)


def test_unknown_engine_option_lists_valid_ones(make_engine):
    from radixlm.errors import ConfigError

    with pytest.raises(ConfigError, match="max_total_tokens"):
        make_engine(max_total_token=100)


def test_return_text_in_logprobs(make_engine):
    engine = make_engine()
    r = engine.generate(
        PROMPT,
        {"temperature": 0, "max_new_tokens": 3},
        return_logprob=True,
        logprob_start_len=1,
        top_logprobs_num=2,
        return_text_in_logprobs=True,
    )
    meta = r["meta_info"]
    ids = engine.tokenizer.encode(PROMPT)
    assert [t[1] for t in meta["input_token_logprobs"]] == ids[1:]
    assert meta["input_token_logprobs"][0][2] == " Once"  # "▁Once": its space included
    # each token's own text, spaces included: the strings join to the output text
    assert "".join(t[2] for t in meta["output_token_logprobs"]) == ", there was" == r["text"]
    for top in meta["output_top_logprobs"]:
        assert len(top) == 2 and all(isinstance(t[2], str) for t in top)
