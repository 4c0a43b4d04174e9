"""SamplingParams.from_dict: defaults, nulls, and a RequestError naming the field for bad input."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest

from radixlm.errors import RequestError
from radixlm.sampling_params import SamplingParams


def test_empty_and_none_give_defaults() -> None:
    assert SamplingParams.from_dict({}) == SamplingParams()
    assert SamplingParams.from_dict(None) == SamplingParams()
    d = SamplingParams()
    assert (d.max_new_tokens, d.temperature, d.top_p, d.top_k, d.min_p) == (128, 1.0, 1.0, -1, 0.0)
    assert (d.skip_special_tokens, d.spaces_between_special_tokens, d.ignore_eos) == (
        True,
        True,
        False,
    )
    assert d.stop == () and d.logit_bias == {} and d.sampling_seed is None
    assert not d.is_greedy and not d.has_penalties


def test_nulls_mean_defaults() -> None:
    raw = {k: None for k in SamplingParams.valid_keys()}
    assert SamplingParams.from_dict(raw) == SamplingParams()


def test_unsupported_keys_accept_empty_values() -> None:
    raw = {"regex": None, "json_schema": "", "ebnf": [], "stop_regex": None}
    assert SamplingParams.from_dict(raw) == SamplingParams()


def test_every_field_is_a_valid_key() -> None:
    assert {f.name for f in fields(SamplingParams)} <= set(SamplingParams.valid_keys())


def test_valid_values_round_trip() -> None:
    p = SamplingParams.from_dict(
        {
            "max_new_tokens": 7,
            "min_new_tokens": 2,
            "stop": ["a", "b", "a"],
            "stop_token_ids": [5, 3, 5],
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "min_p": 0.1,
            "frequency_penalty": -2,
            "presence_penalty": 2,
            "repetition_penalty": 1.1,
            "n": 3,
            "ignore_eos": True,
            "logit_bias": {"3": 1, 4: -2.5},
            "sampling_seed": 11,
            "stream_interval": 4,
        },
        vocab_size=10,
    )
    assert p.stop == ("a", "b")
    assert p.stop_token_ids == (3, 5)
    assert p.frequency_penalty == -2.0 and isinstance(p.frequency_penalty, float)
    assert p.logit_bias == {3: 1.0, 4: -2.5}
    assert (p.n, p.sampling_seed, p.stream_interval, p.ignore_eos) == (3, 11, 4, True)
    assert p.has_penalties


@pytest.mark.parametrize(
    ("raw", "check"),
    [
        ({"top_p": 1}, lambda p: p.top_p == 1.0),
        ({"temperature": 0}, lambda p: p.temperature == 0.0 and p.is_greedy),
        ({"top_k": 1}, lambda p: p.is_greedy),
        ({"max_new_tokens": 0}, lambda p: p.max_new_tokens == 0),
        ({"max_new_tokens": 5, "min_new_tokens": 5}, lambda p: p.min_new_tokens == 5),
        (
            {"max_new_tokens": 4.0},
            lambda p: p.max_new_tokens == 4 and type(p.max_new_tokens) is int,
        ),
        ({"stop": "END"}, lambda p: p.stop == ("END",)),
        ({"stop_token_ids": 2}, lambda p: p.stop_token_ids == (2,)),
        ({"min_p": 1.0}, lambda p: p.min_p == 1.0),
        ({"repetition_penalty": 2.0}, lambda p: p.repetition_penalty == 2.0),
        ({"top_k": -1}, lambda p: p.top_k == -1),
        ({"sampling_seed": -3}, lambda p: p.sampling_seed == -3),
    ],
)
def test_valid_edge_cases_accepted(raw: dict[str, Any], check: Any) -> None:
    assert check(SamplingParams.from_dict(raw, vocab_size=10))


BAD: list[tuple[dict[str, Any], str]] = [
    ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"min_new_tokens": -2}, "min_new_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": float("inf")}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": 0}, "top_k"),
    ({"top_k": -5}, "top_k"),
    ({"min_p": 1.01}, "min_p"),
    ({"min_p": -0.1}, "min_p"),
    ({"frequency_penalty": 2.5}, "frequency_penalty"),
    ({"frequency_penalty": -2.1}, "frequency_penalty"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"presence_penalty": -2.5}, "presence_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"repetition_penalty": 2.5}, "repetition_penalty"),
    ({"n": 0}, r"\bn must"),
    ({"temperature": "abc"}, "temperature"),
    ({"max_new_tokens": 1.5}, "max_new_tokens"),
    ({"max_new_tokens": "8"}, "max_new_tokens"),
    ({"top_k": True}, "top_k"),
    ({"top_p": False}, "top_p"),
    ({"ignore_eos": "yes"}, "ignore_eos"),
    ({"skip_special_tokens": 1}, "skip_special_tokens"),
    ({"sampling_seed": "1"}, "sampling_seed"),
    ({"sampling_seed": True}, "sampling_seed"),
    ({"stream_interval": 0}, "stream_interval"),
    ({"min_new_tokens": 10, "max_new_tokens": 5}, "min_new_tokens"),
    ({"min_new_tokens": 200}, "max_new_tokens"),
    ({"stop": 5}, "stop"),
    ({"stop": ["ok", 5]}, "stop"),
    ({"stop": ""}, "stop"),
    ({"stop": ["ok", ""]}, "stop"),
    ({"stop_token_ids": [10]}, "stop_token_ids"),
    ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ({"stop_token_ids": ["3"]}, "stop_token_ids"),
    ({"stop_token_ids": [True]}, "stop_token_ids"),
    ({"logit_bias": {"abc": 1.0}}, "logit_bias"),
    ({"logit_bias": {None: 1.0}}, "logit_bias"),
    ({"logit_bias": {"10": 1.0}}, "logit_bias"),
    ({"logit_bias": {"-1": 1.0}}, "logit_bias"),
    ({"logit_bias": {"3": "x"}}, "logit_bias"),
    ({"logit_bias": {"3": float("inf")}}, "logit_bias"),
    ({"logit_bias": {"3": True}}, "logit_bias"),
    ({"logit_bias": [1, 2]}, "logit_bias"),
    ({"regex": 5}, "regex"),
    ({"json_schema": 3.5}, "json_schema"),
    ({"regex": "a+", "json_schema": "{}"}, "at most one of regex"),
    ({"ebnf": 5}, "ebnf"),
    ({"regex": "a+", "ebnf": "root ::= 'a'"}, "at most one of regex"),
]


def test_constraints_are_kept() -> None:
    assert SamplingParams.from_dict({"regex": "a+"}).regex == "a+"
    sp = SamplingParams.from_dict({"json_schema": {"type": "object"}})
    assert sp.json_schema == '{"type": "object"}' and sp.is_constrained
    assert SamplingParams.from_dict({"ebnf": "root ::= 'a'"}).ebnf == "root ::= 'a'"


@pytest.mark.parametrize(("raw", "field"), BAD, ids=[repr(r) for r, _ in BAD])
def test_invalid_input_raises_request_error_naming_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(RequestError, match=field):
        SamplingParams.from_dict(raw, vocab_size=10)


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(RequestError) as info:
        SamplingParams.from_dict({"temprature": 0.5, "max_tokens": 3})
    msg = str(info.value)
    assert "temprature" in msg and "max_tokens" in msg
    for key in SamplingParams.valid_keys():
        assert key in msg


@pytest.mark.parametrize("raw", ["temperature=0", ["a"], 3])
def test_non_dict_raises(raw: Any) -> None:
    with pytest.raises(RequestError, match="sampling_params"):
        SamplingParams.from_dict(raw)


def test_request_error_is_http_400() -> None:
    with pytest.raises(RequestError) as info:
        SamplingParams.from_dict({"top_k": 0})
    assert info.value.http_status == 400


def test_logit_bias_rejects_non_integer_key() -> None:
    # A token id must be an integer: 1.5 must not be silently truncated to token 1.
    with pytest.raises(RequestError, match="logit_bias"):
        SamplingParams.from_dict({"logit_bias": {1.5: 1.0}}, vocab_size=10)
