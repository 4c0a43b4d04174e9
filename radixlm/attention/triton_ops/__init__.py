"""Triton kernels of the ``triton`` attention backend (imported lazily; needs ``triton``).

- :mod:`.decode_attention`: one query token per request, split-KV in two stages.
- :mod:`.extend_attention`: prefill of new tokens after a cached prefix, causal.

Both read K/V through a paged index (``kv_indptr``/``kv_indices``, see
:mod:`radixlm.attention.metadata`), accumulate in fp32 and honour a sliding window.

NOTE: ``@triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is defined, so set it before the
first import of these modules to run them on CPU tensors in Triton's interpreter.
"""

from __future__ import annotations

import torch

from radixlm.errors import ConfigError

#: head_dim range the kernels support (padded internally to the next power of two).
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256


def check_head_dim(head_dim: int) -> None:
    """Raise ``ConfigError`` unless the kernels support ``head_dim``."""
    if not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM:
        raise ConfigError(
            f"the triton attention backend supports head_dim {MIN_HEAD_DIM}..{MAX_HEAD_DIM}, "
            f"got {head_dim}; use --attention-backend torch_native"
        )


def interpreting() -> bool:
    """Whether Triton is in interpreter mode now (kernels defined now run on CPU tensors)."""
    import os

    try:
        from triton import knobs

        return bool(knobs.runtime.interpret)
    except (ImportError, AttributeError):  # triton < 3.4 has no knobs
        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def dot_in_fp32(dtype: torch.dtype, interpreted: bool) -> bool:
    """Whether the kernels run their dots on fp32 operands: for fp32 inputs (as exact "ieee"
    dots, not tf32), and in the interpreter for bf16 too. NOTE: Triton 3.9's interpreter computes
    bf16 ``tl.dot`` wrongly (fp16 is fine), so interpreted bf16 runs upcast the operands."""
    return dtype == torch.float32 or (interpreted and dtype == torch.bfloat16)
