"""RMSNorm with the exact numerics of Hugging Face Llama (normalise in fp32, scale in input dtype).

With ``kernels`` set (radixlm.layers.native), the norm runs as the native ``add_rmsnorm`` kernel
(with the residual add fused and the residual updated in place); same numerics.
"""

from __future__ import annotations

import torch
from torch import nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalise in fp32, cast back to ``x``'s dtype, scale by ``weight`` (HF Llama)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(x + residual), x + residual)``; the torch path, and the semantics of the
    native ``add_rmsnorm`` kernel."""
    if residual is not None:
        x = x + residual
    return rms_norm(x, weight, eps), x


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.kernels = None  # radixlm_cpu module, set by radixlm.layers.native

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernels is not None:  # e.g. Qwen3's per-head q/k norm on [T, heads, head_dim]
            rows = x.reshape(-1, x.shape[-1])
            return self.kernels.add_rmsnorm(rows, None, self.weight, self.eps)[0].view(x.shape)
        return rms_norm(x, self.weight, self.eps)

    def forward_with_residual(
        self, x: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add ``x`` to the residual stream, then normalise; returns (normed, new_residual).

        NOTE: the fused kernel writes the sum into ``residual`` (the caller's residual stream,
        which nothing else holds); the torch path returns a new tensor."""
        if self.kernels is not None and x.dim() == 2:
            normed, res = self.kernels.add_rmsnorm(x, residual, self.weight, self.eps)
            return normed, res
        return add_rms_norm(x, residual, self.weight, self.eps)
