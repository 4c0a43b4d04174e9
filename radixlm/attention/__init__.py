"""Attention backends behind one interface; pick one with :func:`create_attention_backend`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from radixlm.errors import ConfigError

if TYPE_CHECKING:
    from radixlm.attention.base import AttentionBackend

_BACKENDS = {
    "torch_native": ("radixlm.attention.torch_native", "TorchNativeBackend"),
    "cpu_native": ("radixlm.attention.cpu_native", "CpuNativeBackend"),
    "triton": ("radixlm.attention.triton_backend", "TritonAttnBackend"),
    "flashinfer": ("radixlm.attention.flashinfer_backend", "FlashInferAttnBackend"),
}


def create_attention_backend(name: str, **kwargs) -> AttentionBackend:
    """Instantiate a backend by name; modules are imported lazily (flashinfer is optional)."""
    if name not in _BACKENDS:
        raise ConfigError(f"attention_backend={name!r} unknown; choose from {sorted(_BACKENDS)}")
    import importlib

    module, cls = _BACKENDS[name]
    return getattr(importlib.import_module(module), cls)(**kwargs)
