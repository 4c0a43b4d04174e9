"""The CUDA path end to end (``gpu``: skipped without CUDA): GPU backends vs transformers (fp32
exact) and vs torch_native (bf16 within a stated tolerance), CUDA graphs ≡ eager, overlap ≡ no
overlap. The kernels themselves are compared with torch_native in ``tests/attention``."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.conftest import TINY_ARCHS, make_tiny_model
from tests.engine.conftest import hf_greedy

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

GREEDY = {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}
HAS_FLASHINFER = importlib.util.find_spec("flashinfer") is not None


def _outputs(engine, prompts, params=GREEDY) -> list[list[int]]:
    return [r["output_ids"] for r in engine.generate(input_ids=prompts, sampling_params=params)]


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_triton_fp32_greedy_matches_transformers(arch, tiny_models, random_prompts, make_engine):
    path = tiny_models[arch]
    engine = make_engine(path, device="cuda", dtype="float32", attention_backend="triton")
    assert engine.runner.config.attention_backend == "triton"  # no silent fallback
    assert engine.runner.graph_runner is not None
    assert _outputs(engine, random_prompts) == hf_greedy(path, random_prompts, 24)


@pytest.fixture(scope="module")
def head64_model(tmp_path_factory) -> str:
    """A tiny Llama with head_dim 64 (flashinfer's smallest), 8 heads / 2 KV heads."""
    import transformers

    path = str(tmp_path_factory.mktemp("head64") / "m")
    make_tiny_model(path, "llama")
    cfg = transformers.AutoConfig.from_pretrained(path)
    cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads = 512, 8, 2
    cfg.head_dim = 64
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(path)
    return path


@pytest.mark.parametrize(
    "backend",
    [
        "triton",
        pytest.param(
            "flashinfer",
            marks=pytest.mark.skipif(not HAS_FLASHINFER, reason="flashinfer not installed"),
        ),
    ],
)
def test_bf16_prompt_logprobs_close_to_torch_native(
    backend, head64_model, random_prompts, make_engine
):
    """bf16 tolerance: prompt logprobs (one prefill, no divergence) within 0.05 mean / 0.25 max
    of torch_native's on the same GPU and dtype."""
    lps = {}
    for name in ("torch_native", backend):
        engine = make_engine(head64_model, device="cuda", dtype="bfloat16", attention_backend=name)
        assert engine.runner.config.attention_backend == name
        res = engine.generate(
            input_ids=random_prompts[1:],
            sampling_params={"temperature": 0, "max_new_tokens": 1},
            return_logprob=True,
            logprob_start_len=0,
        )
        lps[name] = torch.tensor(
            [lp for r in res for lp, _, _ in r["meta_info"]["input_token_logprobs"][1:]]
        )
    diff = (lps[backend] - lps["torch_native"]).abs()
    assert float(diff.mean()) < 0.05 and float(diff.max()) < 0.25


@pytest.mark.parametrize("backend", ["triton", "flashinfer"])
def test_cuda_graph_equals_eager(backend, head64_model, random_prompts, make_engine):
    if backend == "flashinfer" and not HAS_FLASHINFER:
        pytest.skip("flashinfer not installed")
    outs = []
    for disable in (False, True):
        engine = make_engine(
            head64_model, device="cuda", dtype="bfloat16", attention_backend=backend,
            disable_cuda_graph=disable, cuda_graph_max_bs=16,
        )  # fmt: skip
        assert (engine.runner.graph_runner is None) == disable
        outs.append(_outputs(engine, random_prompts))
    assert outs[0] == outs[1]


def test_overlap_equals_no_overlap(tiny_models, random_prompts, make_engine):
    params = [
        GREEDY,
        {
            "temperature": 0.8,
            "top_p": 0.9,
            "top_k": 20,
            "sampling_seed": 7,
            "max_new_tokens": 24,
            "ignore_eos": True,
        },
    ]
    for p in params:
        outs = []
        for disable in (False, True):
            engine = make_engine(
                tiny_models["qwen2"], device="cuda", dtype="float32",
                attention_backend="triton", disable_overlap_schedule=disable,
            )  # fmt: skip
            assert engine.config.overlap_schedule is (not disable)
            outs.append(_outputs(engine, random_prompts, p))
        assert outs[0] == outs[1]
