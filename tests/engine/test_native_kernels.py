"""The engine on the native CPU kernels: same outputs as the torch path, and its fallbacks."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch

import radixlm
from radixlm.errors import ConfigError
from radixlm.kernels import cpu
from radixlm.kernels.reference import quantize_per_channel
from radixlm.layers import native
from radixlm.layers.linear import PackedLinear
from tests.conftest import TINY_ARCHS, make_tiny_model

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")
GREEDY = {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}


def _run(path, prompts, **options):
    engine = radixlm.Engine(path, **options)
    try:
        out = engine.generate(
            input_ids=prompts, sampling_params=GREEDY, return_logprob=True, logprob_start_len=0
        )
        engine.scheduler.check_memory_invariants()
        return engine.runner.config, engine.runner.model, out
    finally:
        engine.shutdown()


def _prompt_logprobs(results) -> torch.Tensor:
    return torch.tensor(
        [lp for r in results for lp, _, _ in r["meta_info"]["input_token_logprobs"][1:]]
    )


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_native_fp32_greedy_equals_torch_path(arch, kernels, tiny_models, random_prompts):
    config, model, native = _run(tiny_models[arch], random_prompts, dtype="float32")
    assert config.cpu_kernels == "auto" and config.attention_backend == "cpu_native"
    assert isinstance(model.lm_head, PackedLinear)  # tied models get a packed head too
    _, _, torch_path = _run(tiny_models[arch], random_prompts, dtype="float32", cpu_kernels="torch")
    assert [r["output_ids"] for r in native] == [r["output_ids"] for r in torch_path]
    drift = (_prompt_logprobs(native) - _prompt_logprobs(torch_path)).abs().max()
    assert drift < 1e-4


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize(
    "options",
    [{"dtype": "float32"}, {"dtype": "bfloat16"}, {"dtype": "bfloat16", "quantization": "w8a16"}],
    ids=["fp32", "bf16", "w8a16"],
)
def test_fused_decode_step_equals_module_path(
    arch, options, kernels, tiny_models, random_prompts, monkeypatch
):
    """The one-call decode step (csrc/cpu/decoder.cpp) runs the modules' kernels in the modules'
    order: outputs and logprobs are bit-identical to the module path on the same kernels."""
    calls = []
    call = native.FusedDecoder.__call__
    monkeypatch.setattr(
        native.FusedDecoder, "__call__", lambda self, *a: (calls.append(1), call(self, *a))[1]
    )
    _, model, fused = _run(tiny_models[arch], random_prompts, **options)
    assert model.fused_decoder is not None and len(calls) >= GREEDY["max_new_tokens"] - 1
    monkeypatch.setattr(native, "FusedDecoder", lambda *a: None)
    _, model, modules = _run(tiny_models[arch], random_prompts, **options)
    assert model.fused_decoder is None
    assert [r["output_ids"] for r in fused] == [r["output_ids"] for r in modules]
    logprobs = [r["meta_info"]["output_token_logprobs"] for r in fused]
    assert logprobs == [r["meta_info"]["output_token_logprobs"] for r in modules]


@pytest.mark.parametrize("arch", ["llama", "qwen3", "mistral"])
def test_native_bf16_as_faithful_as_torch_bf16(arch, kernels, tiny_models, random_prompts):
    """bf16 rounds differently where a reduction order differs; against fp32, the native bf16
    path must stay as close as torch's own bf16 path (prompt logprobs, teacher-forced)."""
    _, _, fp32 = _run(tiny_models[arch], random_prompts, dtype="float32", cpu_kernels="torch")
    _, _, bf16_torch = _run(
        tiny_models[arch], random_prompts, dtype="bfloat16", cpu_kernels="torch"
    )
    _, _, bf16_native = _run(tiny_models[arch], random_prompts, dtype="bfloat16")
    ref = _prompt_logprobs(fp32)
    torch_drift = (_prompt_logprobs(bf16_torch) - ref).abs().mean()
    native_drift = (_prompt_logprobs(bf16_native) - ref).abs().mean()
    assert native_drift <= 1.25 * torch_drift + 2e-3, (native_drift, torch_drift)


def test_stories260k_golden_on_native_kernels(kernels):
    with open(os.path.join(FIXTURES, "stories260K_reference_greedy.json")) as f:
        ref = json.load(f)
    engine = radixlm.Engine(None, cpu_kernels="native")
    try:
        assert engine.runner.config.attention_backend == "cpu_native"
        results = engine.generate(
            [c["prompt"] for c in ref["cases"]],
            {"temperature": 0, "max_new_tokens": ref["max_new_tokens"]},
        )
    finally:
        engine.shutdown()
    assert [r["output_ids"] for r in results] == [c["greedy_ids"] for c in ref["cases"]]


def _int8_exact_checkpoint(tmp_path, arch: str) -> str:
    """A tiny checkpoint whose linear (and tied embedding) weights are already int8 × scale, so
    w8a16 quantization at load is lossless and outputs must equal the fp32 torch path."""
    from safetensors.torch import load_file, save_file

    path = make_tiny_model(str(tmp_path / arch), arch, seed=3)
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    for name, w in tensors.items():
        if w.dim() == 2:
            q, s = quantize_per_channel(w)
            tensors[name] = (q.float() * s[:, None]).contiguous()
    save_file(tensors, file, metadata={"format": "pt"})
    return path


@pytest.mark.parametrize("arch", ["llama", "llama_tied", "qwen2"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_w8a16_is_exact_on_int8_representable_weights(
    kernels, tmp_path, random_prompts, arch, dtype
):
    path = _int8_exact_checkpoint(tmp_path, arch)
    _, model, int8 = _run(path, random_prompts, dtype=dtype, quantization="w8a16")
    assert {m.kind for m in model.modules() if isinstance(m, PackedLinear)} == {"int8"}
    _, _, ref = _run(path, random_prompts, dtype=dtype, cpu_kernels="torch")
    drift = (_prompt_logprobs(int8) - _prompt_logprobs(ref)).abs()
    if dtype == "float32":
        assert [r["output_ids"] for r in int8] == [r["output_ids"] for r in ref]
        assert drift.max() < 1e-4
    else:
        assert drift.mean() < 0.03


def test_w8a16_prompt_logprob_drift_is_bounded(kernels, tiny_models, random_prompts):
    """On ordinary (not int8-representable) weights: int8 drifts, within a bound (teacher-forced
    prompt logprobs against fp32; the 120M benchmark reports greedy agreement)."""
    path = tiny_models["llama"]
    _, _, ref = _run(path, random_prompts, dtype="float32", cpu_kernels="torch")
    _, _, int8 = _run(path, random_prompts, dtype="bfloat16", quantization="w8a16")
    drift = (_prompt_logprobs(int8) - _prompt_logprobs(ref)).abs()
    assert drift.mean() < 0.08 and drift.max() < 0.6


def test_unavailable_kernels_fall_back_with_one_warning(monkeypatch, caplog, tiny_models):
    monkeypatch.setattr(cpu, "_load", lambda: cpu.KernelsUnavailable("no AVX-512 (simulated)"))
    engine = radixlm.Engine(tiny_models["llama"], dtype="float32")
    try:
        assert engine.runner.config.attention_backend == "torch_native"
        assert engine.runner.kernels is None
        assert not any(isinstance(m, PackedLinear) for m in engine.runner.model.modules())
        out = engine.generate(input_ids=[[5, 6, 7]], sampling_params=GREEDY)
        assert len(out[0]["output_ids"]) == 24
    finally:
        engine.shutdown()
    with pytest.raises(ConfigError, match="native CPU kernels are unavailable: no AVX-512"):
        radixlm.Engine(tiny_models["llama"], cpu_kernels="native")
    with pytest.raises(ConfigError, match="native CPU kernels are unavailable"):
        radixlm.Engine(tiny_models["llama"], quantization="w8a16")


def test_loader_warns_once_and_names_the_reason(monkeypatch, caplog):
    cpu._load.cache_clear()
    monkeypatch.setattr(cpu, "_cpu_has_avx512", lambda: False)
    try:
        with caplog.at_level(logging.WARNING, logger="radixlm.kernels.cpu"):
            assert cpu.load_cpu_kernels(required=False) is None
            assert cpu.load_cpu_kernels(required=False) is None
        warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(warnings) == 1 and "no AVX-512" in warnings[0].getMessage()
    finally:
        cpu._load.cache_clear()


def test_quantization_needs_the_native_path(tiny_models):
    with pytest.raises(ConfigError, match="quantization=w8a16 runs on the native CPU kernels"):
        radixlm.Engine(tiny_models["llama"], quantization="w8a16", cpu_kernels="torch")
    with pytest.raises(ConfigError, match="cpu_native needs device=cpu and the native kernels"):
        radixlm.Engine(tiny_models["llama"], attention_backend="cpu_native", cpu_kernels="torch")
