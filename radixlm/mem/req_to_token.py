"""``ReqToTokenPool``: one row per running request listing the KV slot of each of its tokens.

Invariant: a row is owned by at most one request; ``row[r, :kv_len]`` holds valid slot ids for
the request that owns row ``r``; entries past ``kv_len`` are garbage and never read.
"""

from __future__ import annotations

import torch

from radixlm.engine.transfer import to_device
from radixlm.errors import CapacityError


class ReqToTokenPool:
    def __init__(self, size: int, max_context_len: int, device: torch.device | str) -> None:
        self.size = size
        self.max_context_len = max_context_len
        # [size, max_context_len] int32: KV-slot index of every token of the row's request.
        self.req_to_token = torch.zeros((size, max_context_len), dtype=torch.int32, device=device)
        self._free: list[int] = list(range(size))

    def available_size(self) -> int:
        return len(self._free)

    def alloc(self) -> int:
        if not self._free:
            raise CapacityError("no free request slot (max_running_requests reached)")
        return self._free.pop()

    def free(self, row: int) -> None:
        if not 0 <= row < self.size or row in self._free:
            raise RuntimeError(f"double free or bad row {row} in ReqToTokenPool")
        self._free.append(row)

    def write(self, row: int, start: int, slots: torch.Tensor) -> None:
        """Set ``row[start : start + len(slots)] = slots``."""
        self.req_to_token[row, start : start + slots.numel()] = slots.to(torch.int32)

    def write_tokens(self, rows: list[int], cols: list[int], slots: torch.Tensor) -> None:
        """Set ``req_to_token[rows[i], cols[i]] = slots[i]`` for every i (one indexed write)."""
        dev = self.req_to_token.device
        self.req_to_token[to_device(rows, torch.int64, dev), to_device(cols, torch.int64, dev)] = (
            slots.to(torch.int32)
        )

    def read(self, row: int, end: int, start: int = 0) -> torch.Tensor:
        """Slots of tokens ``[start, end)`` of the request in ``row`` as int64."""
        return self.req_to_token[row, start:end].long()

    def clear(self) -> None:
        self._free = list(range(self.size))
