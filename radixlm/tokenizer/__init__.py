"""Tokenizer loading and incremental detokenization."""

from __future__ import annotations

import json
import os
from typing import Any

from radixlm.errors import ModelLoadError


def load_tokenizer(path: str, allow_fast: bool = True) -> Any:
    """Load a Hugging Face tokenizer from a local directory (never the Hub).

    NOTE: when ``tokenizer_config.json`` names a class that :mod:`radixlm.tokenizer.fast_loader`
    reproduces exactly (``TokenizersBackend``, ``LlamaTokenizer``, ``GPT2Tokenizer`` with settings
    it handles), a :class:`~radixlm.tokenizer.fast.FastTokenizer` is returned: the same Rust
    tokenizer and the same API RadixLM uses, without importing transformers (~30 MB of resident
    memory less in every process that loads a tokenizer). ``allow_fast=False`` or any other config
    loads the transformers class.

    Otherwise, when ``tokenizer_config.json`` names its class, that class is loaded directly —
    the same object ``AutoTokenizer`` builds, without ``AutoTokenizer`` first resolving the
    model config, which imports transformers' modelling stack (~100 MB of resident memory and
    seconds of start-up) that a serving process never uses.
    """
    if allow_fast:
        from radixlm.tokenizer.fast_loader import load_fast_tokenizer

        tokenizer = load_fast_tokenizer(path)
        if tokenizer is not None:
            return tokenizer
    return _load_transformers(path)


def _load_transformers(path: str) -> Any:
    import transformers

    cls_name = None
    cfg_path = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            cls_name = json.load(f).get("tokenizer_class")
    try:
        cls = getattr(transformers, cls_name, None) if cls_name else None
        if cls is not None:
            return cls.from_pretrained(path, local_files_only=True)
        return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # transformers raises many unrelated types here
        raise ModelLoadError(f"cannot load a tokenizer from {path!r}: {e}") from e
