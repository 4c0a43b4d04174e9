"""Architecture-independent view of a Hugging Face ``config.json`` for the Llama family.

Reads the JSON directly (no transformers import) and normalises the spellings that differ
between transformers versions (``rope_parameters`` vs ``rope_theta``/``rope_scaling``) and
between architectures (Qwen2's per-layer sliding window, Qwen3's q/k norm).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from radixlm.errors import ModelLoadError


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    qk_norm: bool
    # Per-layer sliding window (None = full attention), length num_layers.
    sliding_windows: tuple[int | None, ...]
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    checkpoint_dtype: str

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim


def _as_ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def load_model_config(model_path: str) -> ModelConfig:
    """Parse ``model_path/config.json`` (+ ``generation_config.json`` for extra EOS ids)."""
    path = os.path.join(model_path, "config.json")
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path} not found: model_path must be a Hugging Face checkpoint dir")
    with open(path) as f:
        raw = json.load(f)
    archs = raw.get("architectures") or []
    if not archs:
        raise ModelLoadError(f"{path} has no 'architectures' entry")
    arch = archs[0]

    num_heads = raw["num_attention_heads"]
    hidden = raw["hidden_size"]
    head_dim = raw.get("head_dim") or hidden // num_heads
    num_layers = raw["num_hidden_layers"]

    rope = raw.get("rope_parameters") or {}
    rope_theta = float(rope.get("rope_theta", raw.get("rope_theta", 10000.0)))
    scaling = raw.get("rope_scaling") or None
    if scaling is None and rope.get("rope_type", "default") != "default":
        scaling = dict(rope)
    if scaling is not None:
        scaling = dict(scaling)
        scaling.setdefault("rope_type", scaling.get("type", "default"))
        if scaling["rope_type"] == "default":
            scaling = None

    windows: list[int | None] = [None] * num_layers
    window = raw.get("sliding_window")
    if arch == "MistralForCausalLM" and window:
        windows = [int(window)] * num_layers
    elif raw.get("use_sliding_window") and window:
        layer_types = raw.get("layer_types")
        if layer_types:
            windows = [int(window) if t == "sliding_attention" else None for t in layer_types]
        else:
            first = raw.get("max_window_layers", num_layers)
            windows = [int(window) if i >= first else None for i in range(num_layers)]

    eos = _as_ids(raw.get("eos_token_id"))
    gen_path = os.path.join(model_path, "generation_config.json")
    if os.path.isfile(gen_path):
        with open(gen_path) as f:
            eos += [i for i in _as_ids(json.load(f).get("eos_token_id")) if i not in eos]

    if raw.get("hidden_act", "silu") != "silu":
        raise ModelLoadError(f"hidden_act={raw.get('hidden_act')!r} unsupported (only silu)")
    if raw.get("mlp_bias"):
        raise ModelLoadError("mlp_bias=true is not supported")
    attention_bias = bool(raw.get("attention_bias", False))
    # NOTE: Qwen2 always has q/k/v biases and never an o_proj bias, whatever attention_bias says.
    is_qwen2 = arch == "Qwen2ForCausalLM"

    return ModelConfig(
        architecture=arch,
        vocab_size=raw["vocab_size"],
        hidden_size=hidden,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=raw.get("num_key_value_heads") or num_heads,
        head_dim=head_dim,
        intermediate_size=raw["intermediate_size"],
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=scaling,
        max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=True if is_qwen2 else attention_bias,
        o_bias=False if is_qwen2 else attention_bias,
        qk_norm=arch == "Qwen3ForCausalLM",
        sliding_windows=tuple(windows),
        eos_token_ids=tuple(eos),
        bos_token_id=raw.get("bos_token_id"),
        checkpoint_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
    )
