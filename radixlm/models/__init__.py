"""Model registry: ``config.json`` architecture name → model class (lazily imported)."""

from __future__ import annotations

import importlib

from radixlm.errors import ModelLoadError

_REGISTRY = {
    "LlamaForCausalLM": ("radixlm.models.llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("radixlm.models.llama", "LlamaForCausalLM"),
    "Qwen2ForCausalLM": ("radixlm.models.llama", "LlamaForCausalLM"),
    "Qwen3ForCausalLM": ("radixlm.models.llama", "LlamaForCausalLM"),
}


def supported_architectures() -> list[str]:
    return sorted(_REGISTRY)


def get_model_class(architecture: str) -> type:
    if architecture not in _REGISTRY:
        raise ModelLoadError(
            f"architecture {architecture!r} is not supported; supported: {supported_architectures()}"
        )
    module, name = _REGISTRY[architecture]
    return getattr(importlib.import_module(module), name)
