"""Move a loaded model onto the native CPU kernels (``csrc/cpu``), as one transform after load.

What changes (the torch path stays the semantics; see radixlm/kernels/reference.py):
- every ``nn.Linear`` (the LM head included; for tied embeddings a packed copy of the
  embedding matrix becomes the head) becomes a :class:`PackedLinear`, whose weight is repacked
  once, here, and streamed once per step by the kernel;
- RMSNorm with its residual add, RoPE and SiLU·mul run fused (``layer.kernels`` is set);
- with ``quantization="w8a16"`` the packed linears hold int8 weights with per-channel scales.

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
    logger.info("native CPU kernels on: %s packed linears, fused norm/RoPE/SiLU", kind)
    return True


def _pack_linears(module: nn.Module, kernels: ModuleType, kind: str) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            packed = PackedLinear(kernels, child.weight, child.bias, kind)
            setattr(module, name, packed)
        else:
            _pack_linears(child, kernels, kind)
