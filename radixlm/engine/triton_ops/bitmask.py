"""Grammar bitmask → logits, in place, in one pass over the logits (Triton).

Semantics are those of the torch reference :meth:`radixlm.constrained.base.GrammarBackend.
apply_mask`: ``mask [B, words]`` int32, bit ``t % 32`` of word ``t // 32`` set = token ``t``
allowed; every logit whose bit is clear becomes -inf. The mask must cover the vocabulary
(at least ``ceil(V / 32)`` words; bits past ``V`` are ignored).

The reference unpacks the mask into a ``[B, 32 * words]`` bool tensor first (three temporary
tensors the size of the logits); the kernel reads each word once per block and only writes the
disallowed logits. Grid ``(B, ceil(V / BLOCK))``; no host sync (launch only).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

#: Vocabulary ids per program.
BLOCK = 4096


@triton.jit
def _apply_bitmask(
    logits_ptr,
    mask_ptr,
    vocab,
    logits_row_stride,
    mask_row_stride,
    BLOCK_SIZE: tl.constexpr,
):
    row = tl.program_id(0)
    ids = tl.program_id(1) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    in_vocab = ids < vocab
    words = tl.load(mask_ptr + row * mask_row_stride + ids // 32, mask=in_vocab, other=-1)
    allowed = (words >> (ids % 32)) & 1
    neg_inf = tl.full((BLOCK_SIZE,), float("-inf"), tl.float32)
    tl.store(
        logits_ptr + row * logits_row_stride + ids,
        neg_inf.to(logits_ptr.dtype.element_ty),
        mask=in_vocab & (allowed == 0),
    )


def apply_token_bitmask_inplace(logits: torch.Tensor, mask: torch.Tensor) -> None:
    """Set ``logits[b, t] = -inf`` wherever bit ``t`` of ``mask[b]`` is clear (in place).

    ``logits [B, V]`` (unit stride along V), ``mask [B, words]`` int32 on the same device with
    ``32 * words >= V``.
    """
    batch, vocab = logits.shape
    if mask.shape[0] != batch or mask.shape[1] * 32 < vocab:
        raise ValueError(
            f"bitmask of shape {tuple(mask.shape)} does not cover logits of shape "
            f"{tuple(logits.shape)} (need [B, >= ceil(V / 32)])"
        )
    if logits.stride(1) != 1:
        raise ValueError("logits must have unit stride along the vocabulary")
    if mask.dtype != torch.int32 or mask.stride(1) != 1:
        mask = mask.to(torch.int32).contiguous()
    if batch == 0:
        return
    grid = (batch, triton.cdiv(vocab, BLOCK))
    _apply_bitmask[grid](logits, mask, vocab, logits.stride(0), mask.stride(0), BLOCK_SIZE=BLOCK)
