"""The Triton grammar-bitmask kernel against the torch reference ``GrammarBackend.apply_mask``.

Without CUDA the kernel runs on CPU tensors in Triton's interpreter: ``TRITON_INTERPRET`` is
set below, before the kernel module is first imported (``@triton.jit`` reads it then).
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from radixlm.constrained.base import GrammarBackend  # noqa: E402
from radixlm.engine.triton_ops.bitmask import apply_token_bitmask_inplace  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def random_mask(batch: int, words: int, gen: torch.Generator) -> torch.Tensor:
    bits = torch.randint(-(2**31), 2**31, (batch, words), generator=gen, dtype=torch.int64)
    return bits.to(torch.int32)


@pytest.mark.parametrize(
    "batch,vocab,extra_words",
    [(1, 32, 0), (3, 100, 0), (2, 4097, 0), (4, 5000, 2), (1, 33, 0)],
    ids=lambda v: str(v),
)
def test_kernel_matches_torch_reference(batch: int, vocab: int, extra_words: int) -> None:
    gen = torch.Generator().manual_seed(vocab)
    mask = random_mask(batch, (vocab + 31) // 32 + extra_words, gen)
    mask[0, 0] = 0  # a fully masked word
    mask[-1, -1] = -1  # a fully allowed word
    logits = torch.randn(batch, vocab, generator=gen)
    want = logits.clone()
    GrammarBackend.apply_mask(want, mask)
    got = logits.to(DEVICE)
    apply_token_bitmask_inplace(got, mask.to(DEVICE))
    assert torch.equal(got.cpu(), want)


def test_kernel_honours_row_stride_and_half_precision() -> None:
    gen = torch.Generator().manual_seed(0)
    wide = torch.randn(3, 80, generator=gen).to(torch.float16)
    mask = random_mask(3, 2, gen)
    want = wide[:, :50].clone()
    GrammarBackend.apply_mask(want, mask)
    got = wide.to(DEVICE)
    apply_token_bitmask_inplace(got[:, :50], mask.to(DEVICE))  # row stride 80, not 50
    assert torch.equal(got[:, :50].cpu(), want)
    assert torch.equal(got[:, 50:].cpu(), wide[:, 50:])  # columns past the vocabulary untouched


def test_kernel_rejects_a_mask_that_does_not_cover_the_vocabulary() -> None:
    logits = torch.zeros(2, 65, device=DEVICE)
    with pytest.raises(ValueError, match="does not cover"):
        apply_token_bitmask_inplace(logits, torch.zeros(2, 2, dtype=torch.int32, device=DEVICE))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_sampler_uses_the_kernel_with_reference_semantics() -> None:
    from radixlm.engine.sampler import apply_vocab_mask

    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 32000, generator=gen)
    mask = random_mask(64, 1000, gen)
    want = logits.clone()
    GrammarBackend.apply_mask(want, mask)
    got = logits.cuda()
    apply_vocab_mask(got, mask.cuda())
    assert torch.equal(got.cpu(), want)
