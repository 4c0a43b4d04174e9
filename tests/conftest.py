"""Shared fixtures: tiny random-weight checkpoints made with transformers (no download)."""

from __future__ import annotations

import os
import shutil

import pytest

from radixlm.config import BUNDLED_MODEL


def pytest_configure(config) -> None:
    """Under pytest-xdist, split the cores between workers: torch's default (every core per
    process) oversubscribes the CPU, and spinning OpenMP threads then slow small ops by 10×+.

    Also build the native CPU kernels once, up front (in the controlling process, before any
    worker starts): every engine and server of the suite loads them, and a server test should
    not spend its start-up timeout waiting for the first build (about a minute)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    from radixlm.kernels import cpu

    if cpu._cpu_has_avx512():
        cpu.load_cpu_kernels(required=False)  # a failure is reported by the tests that need it


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
VOCAB = 512  # the bundled SentencePiece tokenizer's size, so tiny models can take text


def _tiny_config(arch: str):
    import transformers

    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        # Sharper random logits: greedy decisions are not decided by float rounding.
        initializer_range=0.2,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        return transformers.LlamaConfig(
            **common,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        )
    if arch == "llama_tied":
        return transformers.LlamaConfig(
            **{**common, "tie_word_embeddings": True, "num_key_value_heads": 4}
        )
    if arch == "mistral":
        return transformers.MistralConfig(**common, sliding_window=24)
    if arch == "qwen2":
        return transformers.Qwen2Config(**common)
    if arch == "qwen3":
        return transformers.Qwen3Config(**common, head_dim=32)
    raise ValueError(arch)


def make_tiny_model(path: str, arch: str, seed: int = 0) -> str:
    import torch
    import transformers

    torch.manual_seed(seed)
    config = _tiny_config(arch)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(path)
    for f in TOKENIZER_FILES:
        shutil.copy(os.path.join(BUNDLED_MODEL, f), path)
    return path


def make_tiny_model_with_tokens(
    path: str, tokens: list[str], special: bool, arch: str = "qwen2", seed: int = 5
) -> str:
    """A tiny model whose tokenizer adds ``tokens`` after the bundled vocabulary (ids 512, 513,
    ...), as special tokens or as plain added tokens (Qwen3 has ``<think>`` as the latter);
    the embedding has room for up to 8."""
    import torch
    import transformers

    assert len(tokens) <= 8
    tok = transformers.AutoTokenizer.from_pretrained(BUNDLED_MODEL)
    tok.add_tokens(tokens, special_tokens=special)
    config = _tiny_config(arch)
    config.vocab_size = VOCAB + 8
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


TINY_ARCHS = ("llama", "llama_tied", "mistral", "qwen2", "qwen3")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {a: make_tiny_model(str(root / a), a, seed=i) for i, a in enumerate(TINY_ARCHS)}


@pytest.fixture(scope="session")
def kernels():
    """The native CPU kernels (csrc/cpu), built once per machine (about a minute, then cached).

    On a CPU with AVX-512 and a C++ compiler the build must succeed (a failure fails the test);
    only a CPU without AVX-512, or no compiler, skips, with that reason."""
    from radixlm.kernels import cpu

    if not cpu._cpu_has_avx512():
        pytest.skip("this CPU has no AVX-512: the native kernels are not built here")
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler on PATH")
    return cpu.load_cpu_kernels(required=True)


@pytest.fixture(scope="session")
def stories_model() -> str:
    return BUNDLED_MODEL
