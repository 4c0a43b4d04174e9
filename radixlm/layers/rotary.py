"""Rotary position embeddings (rotate-half layout) with default, linear and llama3 scaling.

The cos/sin table is precomputed for every position up to ``max_positions`` in fp32, exactly as
Hugging Face computes it per call (``positions * inv_freq``), so results match bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from radixlm.errors import ModelLoadError


def _inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    return 1.0 / (theta**exponents)


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_ctx = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding:
    """Applies RoPE to q/k given absolute ``positions`` (one per token, any order).

    A plain object, not an ``nn.Module``: its fp32 tables must not be cast with the weights.
    """

    def __init__(
        self,
        head_dim: int,
        theta: float,
        max_positions: int,
        scaling: dict[str, Any] | None,
        device: torch.device | str,
    ) -> None:
        inv_freq = _inv_freq(head_dim, theta)
        rope_type = (scaling or {}).get("rope_type", "default")
        if rope_type == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, scaling)
        elif rope_type == "linear":
            inv_freq = inv_freq / scaling["factor"]
        elif rope_type != "default":
            raise ModelLoadError(
                f"rope_type={rope_type!r} is not supported (supported: default, linear, llama3)"
            )
        # NOTE: built on the CPU explicitly: the model may be constructed under a meta device.
        positions = torch.arange(max_positions, dtype=torch.float32, device="cpu")
        freqs = positions[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)  # [max_positions, head_dim]
        self.cos_cache = emb.cos().to(device)
        self.sin_cache = emb.sin().to(device)
        self.kernels = None  # radixlm_cpu module (in-place fused RoPE), set by layers.native

    def __call__(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # q: [T, num_heads, head_dim], k: [T, num_kv_heads, head_dim], positions: [T]
        if self.kernels is not None:
            self.kernels.rope_(positions, q, k, self.cos_cache, self.sin_cache)  # in place
            return q, k
        return apply_rope(positions, q, k, self.cos_cache, self.sin_cache)


def apply_rope(
    positions: torch.Tensor,  # [T]
    q: torch.Tensor,  # [T, num_heads, head_dim]
    k: torch.Tensor,  # [T, num_kv_heads, head_dim]
    cos_cache: torch.Tensor,  # [max_positions, head_dim] fp32
    sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE with the tables cast to q's dtype (HF numerics); the torch path, and the
    semantics of the native ``rope_`` kernel."""
    cos = cos_cache[positions].to(q.dtype).unsqueeze(1)  # [T, 1, head_dim]
    sin = sin_cache[positions].to(q.dtype).unsqueeze(1)
    return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
