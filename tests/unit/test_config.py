"""EngineConfig.from_options: validation, derived defaults, immutability."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import radixlm.config as config_mod
from radixlm.config import BUNDLED_MODEL, EngineConfig
from radixlm.errors import ConfigError


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolve as on a CPU-only machine, whatever this one has."""
    monkeypatch.setattr(config_mod, "_cuda_available", lambda: False)


def test_unknown_option_lists_valid_options() -> None:
    with pytest.raises(ConfigError) as info:
        EngineConfig.from_options(max_total_token=100, foo=1)
    msg = str(info.value)
    assert "max_total_token" in msg and "foo" in msg
    for name in EngineConfig.field_names():
        assert name in msg


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"dtype": "int8"}, "dtype"),
        ({"schedule_policy": "foo"}, "schedule_policy"),
        ({"device": "tpu"}, "device"),
        ({"attention_backend": "flash"}, "attention_backend"),
        ({"log_level": "loud"}, "log_level"),
    ],
)
def test_invalid_choice_raises(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        EngineConfig.from_options(**options)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_total_tokens": 0}, "max_total_tokens"),
        ({"max_running_requests": -3}, "max_running_requests"),
        ({"context_length": "512"}, "context_length"),
        ({"num_threads": 0}, "num_threads"),
        ({"max_prefill_tokens": 0}, "max_prefill_tokens"),
        ({"chunked_prefill_size": 0}, "chunked_prefill_size"),
        ({"chunked_prefill_size": -2}, "chunked_prefill_size"),
        ({"stream_interval": 0}, "stream_interval"),
        ({"schedule_conservativeness": 0}, "schedule_conservativeness"),
        ({"mem_fraction_static": 1.0}, "mem_fraction_static"),
        ({"mem_fraction_static": 0}, "mem_fraction_static"),
    ],
)
def test_out_of_range_value_raises(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        EngineConfig.from_options(**options)


@pytest.mark.parametrize(
    "options",
    [
        {"max_prefill_tokens": "abc"},
        {"mem_fraction_static": "0.5"},
        {"schedule_conservativeness": "x"},
    ],
    ids=lambda o: next(iter(o)),
)
def test_wrongly_typed_option_raises_config_error(options: dict[str, Any]) -> None:
    # errors.py: every error a user can cause is a RadixLMError; not a bare TypeError.
    with pytest.raises(ConfigError, match=next(iter(options))):
        EngineConfig.from_options(**options)


def test_defaults_resolve_to_bundled_model(no_cuda: None) -> None:
    cfg = EngineConfig.from_options()
    assert cfg.model_path == BUNDLED_MODEL
    assert cfg.tokenizer_path == BUNDLED_MODEL
    assert cfg.device == "cpu"
    # CPU: the native kernels' attention (the runner falls back to torch_native without them)
    assert cfg.attention_backend == "cpu_native" and cfg.cpu_kernels == "auto"
    assert EngineConfig.from_options(cpu_kernels="torch").attention_backend == "torch_native"
    assert cfg.quantization == "none"
    assert cfg.mem_fraction_static == 0.2
    assert cfg.chunk_size == 2048  # CPU default
    assert EngineConfig.from_options(model_path=None).model_path == BUNDLED_MODEL


def test_explicit_tokenizer_path_kept(tmp_path: Any) -> None:
    cfg = EngineConfig.from_options(tokenizer_path=str(tmp_path))
    assert cfg.tokenizer_path == str(tmp_path)
    assert cfg.model_path == BUNDLED_MODEL


def test_nonexistent_model_path_raises(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="model_path"):
        EngineConfig.from_options(model_path=str(tmp_path / "missing"))
    a_file = tmp_path / "config.json"
    a_file.write_text("{}")
    with pytest.raises(ConfigError, match="not a directory"):
        EngineConfig.from_options(model_path=str(a_file))


def test_cuda_requested_without_cuda_raises(no_cuda: None) -> None:
    with pytest.raises(ConfigError, match="cuda"):
        EngineConfig.from_options(device="cuda")


def test_chunking_disabled_gives_no_chunk_size() -> None:
    assert EngineConfig.from_options(chunked_prefill_size=-1).chunk_size is None


def test_chunk_larger_than_prefill_budget_raises_budget() -> None:
    cfg = EngineConfig.from_options(chunked_prefill_size=8192, max_prefill_tokens=1024)
    assert (cfg.chunk_size, cfg.max_prefill_tokens) == (8192, 8192)
    off = EngineConfig.from_options(chunked_prefill_size=-1, max_prefill_tokens=1024)
    assert off.max_prefill_tokens == 1024


def test_config_is_frozen() -> None:
    cfg = EngineConfig.from_options()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dtype = "float16"  # type: ignore[misc]


def test_resolve_is_idempotent_and_replace_revalidates(no_cuda: None) -> None:
    cfg = EngineConfig.from_options(max_total_tokens=256)
    assert cfg.resolve() == cfg
    assert cfg.replace(dtype="bfloat16").dtype == "bfloat16"
    assert cfg.dtype == "auto"
    with pytest.raises(ConfigError, match="dtype"):
        cfg.replace(dtype="int8")


def test_tp_and_dp_size_one_accepted_larger_refused():
    """A copied SGLang launch line with --tp-size 1 / --dp-size 1 works; more ranks or replicas
    are refused with the reason (not ignored)."""
    import argparse

    from radixlm.cli import add_engine_args, engine_options

    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    args = parser.parse_args(["--tp", "1", "--dp-size", "1"])
    assert EngineConfig.from_options(**engine_options(args)).tp_size == 1
    for name in ("tp_size", "dp_size"):
        with pytest.raises(ConfigError, match=f"{name}=2: this server runs one rank"):
            EngineConfig.from_options(**{name: 2})
