"""Tokenizer loading and incremental detokenization."""

from __future__ import annotations

import json
import os
from typing import Any

from radixlm.errors import ModelLoadError


def load_tokenizer(path: str) -> Any:
    """Load a Hugging Face tokenizer from a local directory (never the Hub).

    NOTE: when ``tokenizer_config.json`` names its class, that class is loaded directly —
    the same object ``AutoTokenizer`` builds, without ``AutoTokenizer`` first resolving the
    model config, which imports transformers' modelling stack (~100 MB of resident memory and
    seconds of start-up) that a serving process never uses.
    """
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
