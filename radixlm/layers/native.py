"""Move a loaded model onto the native CPU kernels (``csrc/cpu``), as one transform after load.

What changes (the torch path stays the semantics; see radixlm/kernels/reference.py):
- every ``nn.Linear`` (the LM head included; for tied embeddings a packed copy of the
  embedding matrix becomes the head) becomes a :class:`PackedLinear`, whose weight is repacked
  once, here, and streamed once per step by the kernel;
- RMSNorm with its residual add, RoPE and SiLU·mul run fused (``layer.kernels`` is set);
- with ``quantization="w8a16"`` the packed linears hold int8 weights with per-channel scales;
- the decode step of a Llama-family model runs as one native call (:class:`FusedDecoder`,
  ``csrc/cpu/decoder.cpp``) over the same packed weights, when the attention backend reads K/V
  from the pools by slot (``cpu_native``): the same kernels in the same order as the modules, so
  the same output, without ~100 Python module calls per step.

Attention is not part of this transform: the ``cpu_native`` attention backend reads K/V from
the pools itself.
"""

from __future__ import annotations

import logging
from types import ModuleType

import torch
from torch import nn

from radixlm.errors import ConfigError
from radixlm.layers.linear import PackedLinear, packed_kind

logger = logging.getLogger(__name__)


def use_native_kernels(
    model: nn.Module, kernels: ModuleType, dtype: torch.dtype, quantization: str | None
) -> bool:
    """Rewrite ``model`` in place (see the module docstring); False (model untouched) for a
    dtype the kernels do not handle (fp16). Raises ConfigError when ``quantization`` cannot be
    honoured for ``dtype``."""
    kind = packed_kind(dtype, quantization)
    if kind is None:
        if quantization is not None:
            raise ConfigError(f"quantization={quantization} supports dtype float32 or bfloat16")
        logger.info("native CPU kernels: none for %s; using the torch path", dtype)
        return False
    _pack_linears(model, kernels, kind)
    head = getattr(model, "lm_head", None)
    if head is None and hasattr(model, "model"):
        # Tied embeddings: the head gets its own packed copy; the embedding stays for lookup.
        model.lm_head = PackedLinear(kernels, model.model.embed_tokens.weight, None, kind)
    for module in model.modules():  # RMSNorm, MLP (and the PackedLinears, already set)
        if hasattr(module, "kernels"):
            module.kernels = kernels
    rotary = getattr(model, "rotary", None)
    if rotary is not None:
        rotary.kernels = kernels
    if hasattr(model, "fused_decoder"):
        model.fused_decoder = FusedDecoder(model, kernels, dtype)
    logger.info("native CPU kernels on: %s packed linears, fused norm/RoPE/SiLU", kind)
    return True


class FusedDecoder:
    """A Llama-family model's decode step as one call into ``radixlm_cpu.DecoderStack``.

    Holds references to the model's (already packed) weights, no copies. ``__call__`` returns
    the final-norm hidden states ``[B, hidden]`` exactly as ``LlamaForCausalLM.forward`` would on
    the native kernels (same kernels, same order), and writes the step's K/V into the pools.
    It applies only when the pools hold the model's dtype (else the caller runs the modules).
    """

    def __init__(self, model: nn.Module, kernels: ModuleType, dtype: torch.dtype) -> None:
        cfg = model.config
        inner = model.model
        self.dtype = dtype
        self.stack = kernels.DecoderStack(
            inner.embed_tokens.weight,
            inner.norm.weight,
            model.rotary.cos_cache,
            model.rotary.sin_cache,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.rms_norm_eps,
            inner.layers[0].self_attn.scaling,  # the same for every layer
        )
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.stack.add_layer(
                layer.input_layernorm.weight,
                layer.post_attention_layernorm.weight,
                None if attn.q_norm is None else attn.q_norm.weight,
                None if attn.k_norm is None else attn.k_norm.weight,
                _linear_args(attn.qkv_proj),
                _linear_args(attn.o_proj),
                _linear_args(mlp.gate_up_proj),
                _linear_args(mlp.down_proj),
                attn.sliding_window or 0,
            )

    def applies(self, pool_dtype: torch.dtype) -> bool:
        return pool_dtype == self.dtype

    def __call__(self, fb, table: torch.Tensor, rows: torch.Tensor, lens: torch.Tensor):
        pool = fb.kv_pool
        return self.stack.decode(
            fb.input_ids,
            fb.positions,
            fb.out_cache_loc,
            table,
            rows,
            lens,
            pool.k_buffers,
            pool.v_buffers,
        )


def _linear_args(linear: PackedLinear) -> tuple:
    return (linear.packed, linear.out_features, linear.kind, linear.scales, linear.bias)


def _pack_linears(module: nn.Module, kernels: ModuleType, kind: str) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            packed = PackedLinear(kernels, child.weight, child.bias, kind)
            setattr(module, name, packed)
        else:
            _pack_linears(child, kernels, kind)
