"""Per-layer K/V buffers (``TokenToKVPool``) and their slot allocator (``SlotAllocator``).

Slot 0 is reserved: it is never handed out, always holds zeros, and is the gather target for
padding, so masked-out positions can never inject NaN/Inf into attention.

Ownership invariant (checked by :meth:`SlotAllocator.check_consistency` in tests): every slot in
``1..size`` is owned by exactly one of {the allocator's free list, the prefix cache, a running
request's private tail}.
"""

from __future__ import annotations

import torch


class SlotAllocator:
    """Free list of KV slots ``1..size`` (page size 1). ``alloc`` returns None when short."""

    def __init__(self, size: int, device: torch.device | str) -> None:
        self.size = size
        self.device = device
        self._free = torch.arange(1, size + 1, dtype=torch.int64, device=device)

    def available_size(self) -> int:
        return int(self._free.numel())

    def alloc(self, n: int) -> torch.Tensor | None:
        if n > self._free.numel():
            return None
        out, self._free = self._free[:n], self._free[n:]
        return out

    def free(self, slots: torch.Tensor) -> None:
        if slots.numel():
            self._free = torch.cat((self._free, slots.to(device=self.device, dtype=torch.int64)))

    def clear(self) -> None:
        self._free = torch.arange(1, self.size + 1, dtype=torch.int64, device=self.device)

    def free_slots(self) -> torch.Tensor:
        return self._free

    def check_consistency(self) -> None:
        """Raise if the free list holds a duplicate, slot 0, or an out-of-range slot."""
        free = self._free.cpu()
        if free.numel() and (int(free.min()) < 1 or int(free.max()) > self.size):
            raise RuntimeError("free list holds an out-of-range slot")
        if torch.unique(free).numel() != free.numel():
            raise RuntimeError("free list holds a slot twice (double free)")


class TokenToKVPool:
    """K and V buffers per layer, shape ``[size + 1, num_kv_heads, head_dim]`` (row 0 = padding)."""

    def __init__(
        self,
        size: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        self.size = size
        self.dtype = dtype
        shape = (size + 1, num_kv_heads, head_dim)
        # NOTE: torch.empty keeps untouched pages out of RSS; only slot 0 must be zero (padding).
        self.k_buffers = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v_buffers = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        for buf in (*self.k_buffers, *self.v_buffers):
            buf[0].zero_()
        self.allocator = SlotAllocator(size, device)

    @staticmethod
    def bytes_per_token(
        num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> int:
        return (
            2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()
        )

    def set_kv(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write new tokens' K/V (``[T, kv_heads, head_dim]``) into ``slots`` ([T])."""
        self.k_buffers[layer][slots] = k.to(self.dtype)
        self.v_buffers[layer][slots] = v.to(self.dtype)
