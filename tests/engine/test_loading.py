"""Checkpoint loading: sharded files, dtypes, and loud failures for broken checkpoints."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from radixlm.errors import ConfigError, ModelLoadError
from tests.conftest import make_tiny_model

GREEDY = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}


def test_sharded_checkpoint_loads_identically(tmp_path, tiny_models, random_prompts, make_engine):
    import transformers

    src = tiny_models["qwen3"]
    sharded = tmp_path / "sharded"
    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.save_pretrained(sharded, max_shard_size="100KB")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(src, f), sharded)
    assert (sharded / "model.safetensors.index.json").exists()
    assert len(list(sharded.glob("*.safetensors"))) > 1
    a = make_engine(src).generate(input_ids=random_prompts, sampling_params=GREEDY)
    b = make_engine(str(sharded)).generate(input_ids=random_prompts, sampling_params=GREEDY)
    assert [r["output_ids"] for r in a] == [r["output_ids"] for r in b]


def test_missing_weight_is_a_load_error(tmp_path, make_engine):
    from safetensors.torch import load_file, save_file

    path = make_tiny_model(str(tmp_path / "m"), "llama")
    weights = load_file(os.path.join(path, "model.safetensors"))
    del weights["model.layers.1.self_attn.k_proj.weight"]
    save_file(weights, os.path.join(path, "model.safetensors"))
    with pytest.raises(ModelLoadError, match="qkv_proj"):
        make_engine(path)


def test_unexpected_weight_is_a_load_error(tmp_path, make_engine):
    from safetensors.torch import load_file, save_file

    path = make_tiny_model(str(tmp_path / "m"), "llama")
    weights = load_file(os.path.join(path, "model.safetensors"))
    weights["model.layers.0.mystery.weight"] = torch.zeros(2, 2)
    save_file(weights, os.path.join(path, "model.safetensors"))
    with pytest.raises(ModelLoadError, match="mystery"):
        make_engine(path)


def test_unsupported_architecture(tmp_path, make_engine):
    path = make_tiny_model(str(tmp_path / "m"), "llama")
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["architectures"] = ["GPT2LMHeadModel"]
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ModelLoadError, match="LlamaForCausalLM"):
        make_engine(path)


def test_bad_model_path_is_a_config_error(tmp_path, make_engine):
    with pytest.raises(ConfigError, match="not a directory"):
        make_engine(str(tmp_path / "nope"))


def test_dtypes(make_engine):
    fp32 = make_engine(dtype="auto")
    assert fp32.runner.dtype == torch.float32  # the checkpoint's dtype
    bf16 = make_engine(dtype="bfloat16")
    assert bf16.runner.model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert bf16.runner.kv_pool.k_buffers[0].dtype == torch.bfloat16
    kwargs = {"sampling_params": {"temperature": 0, "max_new_tokens": 8}, "return_logprob": True}
    a = fp32.generate("Once upon a time", **kwargs)
    b = bf16.generate("Once upon a time", **kwargs)
    assert len(b["output_ids"]) == 8
    # bf16 tracks fp32 closely on the first tokens of a trained model
    assert b["output_ids"][:3] == a["output_ids"][:3]
    for x, y in zip(
        a["meta_info"]["output_token_logprobs"][:3], b["meta_info"]["output_token_logprobs"][:3]
    ):
        assert abs(x[0] - y[0]) < 0.1
    fp16 = make_engine(dtype="float16")
    assert len(fp16.generate("Once upon a time", {"max_new_tokens": 4})["output_ids"]) == 4


def test_dummy_load_format_needs_only_config(tmp_path, tiny_models, make_engine):
    """``load_format="dummy"``: random weights from config.json alone, seeded, norms at 1."""
    src = tiny_models["qwen3"]
    for f in os.listdir(src):
        if not f.endswith(".safetensors"):
            shutil.copy(os.path.join(src, f), tmp_path)
    params = {"temperature": 0, "max_new_tokens": 4, "ignore_eos": True}
    outs = []
    for seed in (1, 1, 2):
        # cpu_kernels="torch": the weights stay parameters (packed linears hold buffers)
        engine = make_engine(
            str(tmp_path), load_format="dummy", random_seed=seed, cpu_kernels="torch"
        )
        named = dict(engine.runner.model.named_parameters())
        assert all(bool((p == 1).all()) for n, p in named.items() if n.endswith("norm.weight"))
        std = float(named["model.layers.0.mlp.down_proj.weight"].std())
        assert 0.015 < std < 0.025
        outs.append(engine.generate(input_ids=[5, 6, 7], sampling_params=params)["output_ids"])
    assert outs[0] == outs[1]
    with pytest.raises(ModelLoadError):  # the default format still insists on the weights
        make_engine(str(tmp_path))
