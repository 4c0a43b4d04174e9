"""Tokenizer loading and incremental detokenization."""

from __future__ import annotations

from typing import Any

from radixlm.errors import ModelLoadError


def load_tokenizer(path: str) -> Any:
    """Load a Hugging Face tokenizer from a local directory (never the Hub)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # transformers raises many unrelated types here
        raise ModelLoadError(f"cannot load a tokenizer from {path!r}: {e}") from e
