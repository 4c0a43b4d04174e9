"""Host↔device copies that never stall the stream: pinned staging and ``non_blocking`` copies.

Why: on CUDA, ``torch.tensor(list, device="cuda")`` and ``tensor.tolist()`` are synchronous
(a pageable copy waits for every kernel queued before it). A thread that queues the next batch
then idles until the device drains, and the device idles while that thread catches up.

- ``to_device(values, dtype, device)``: a host list staged in pinned memory and copied with
  ``non_blocking=True``; the copy is queued on the current stream, so kernels queued after it
  see the data. The caching host allocator keeps the staging buffer alive until the copy is
  done, so the caller may drop it at once.
- ``to_host(tensor)``: starts a device→pinned-host copy on the current stream and returns the
  host tensor. Its contents are valid only once the stream has reached the copy: record a
  ``torch.cuda.Event`` after the copies and ``synchronize()`` it before reading.

On CPU both are plain (synchronous) operations and ``to_host`` returns its argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def to_device(values: Sequence, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.tensor(values, dtype=dtype)`` on ``device``, copied without a host sync."""
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    staged = torch.tensor(values, dtype=dtype, pin_memory=True)
    return staged.to(device, non_blocking=True)


def pinned_to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to ``device`` without a host sync (pinning it first on CUDA)."""
    if device.type != "cuda":
        return host.to(device)
    if not host.is_pinned():
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """Start copying ``tensor`` to pinned host memory; valid after the stream reaches the copy."""
    if tensor.device.type != "cuda":
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host
