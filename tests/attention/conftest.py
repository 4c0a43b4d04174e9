"""Attention-backend tests. Without CUDA the Triton kernels run in Triton's interpreter.

NOTE: ``@triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is *defined*, so it is set here,
at conftest import, before any test module imports ``radixlm.attention.triton_ops``.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def cuda() -> torch.device:
    """The CUDA device; skips the test without one."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    return torch.device("cuda")


@pytest.fixture
def device() -> torch.device:
    """Where the small kernel tests run: CUDA when present, else CPU through the interpreter."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
