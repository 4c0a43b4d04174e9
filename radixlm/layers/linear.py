"""``PackedLinear``: a linear layer whose weight is prepacked for the native CPU GEMM.

Built from a loaded ``nn.Linear`` by :mod:`radixlm.layers.native`; the packed tiles replace the
weight (one copy in memory). ``kind`` is the weight format the kernel streams:
- ``fp32`` / ``bf16``: the weight in the model's dtype (same numerics as ``F.linear``, fp32
  accumulation);
- ``int8`` (``--quantization w8a16``): symmetric per-output-channel int8 weights, fp32 scales,
  activations in the model's dtype: ``y = (x @ q^T) * s + b`` (see
  :func:`radixlm.kernels.reference.quantize_per_channel`).
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

from radixlm.kernels.reference import quantize_per_channel


class PackedLinear(nn.Module):
    """``y[..., N] = x[..., K] @ W^T (+ b)`` through ``kernels.linear_packed``."""

    def __init__(
        self,
        kernels: ModuleType,
        weight: torch.Tensor,  # [N, K]
        bias: torch.Tensor | None,
        kind: str,
    ) -> None:
        super().__init__()
        self.kernels = kernels
        self.kind = kind
        self.out_features, self.in_features = weight.shape
        if kind == "int8":
            q, scales = quantize_per_channel(weight)
            self.register_buffer("scales", scales, persistent=False)
            packed = kernels.pack_linear_weight(q, "int8")
        else:
            self.scales = None
            dtype = torch.float32 if kind == "fp32" else torch.bfloat16
            packed = kernels.pack_linear_weight(weight.detach().to(dtype), kind)
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer(
            "bias", None if bias is None else bias.detach().float().clone(), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self.kernels.linear_packed(
            x.reshape(-1, self.in_features),
            self.packed,
            self.out_features,
            self.kind,
            self.scales,
            self.bias,
        )  # [M, N]
        return y.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, kind={self.kind}"


def packed_kind(dtype: torch.dtype, quantization: str | None) -> str | None:
    """The packed weight format for a model dtype, or None when the kernel has none (fp16)."""
    if quantization == "w8a16":
        return "int8" if dtype in (torch.float32, torch.bfloat16) else None
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(dtype)
