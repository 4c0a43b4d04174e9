"""RadixLM's frontend language, API-compatible with SGLang's (``import radixlm_lang as sgl``).

Importing this package is cheap: it never imports torch or the runtime; the concrete backends
(``RuntimeEndpoint``, ``Runtime``, ``EngineBackend``, ``OpenAI``, ``MockBackend``) are loaded on
first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

from radixlm_lang.api import (
    assistant,
    assistant_begin,
    assistant_end,
    flush_cache,
    gen,
    gen_int,
    gen_string,
    get_server_info,
    image,
    select,
    set_default_backend,
    system,
    system_begin,
    system_end,
    tool,
    user,
    user_begin,
    user_end,
)
from radixlm_lang.choices import (
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from radixlm_lang.function import function
from radixlm_lang.global_config import global_config

_LAZY = {
    "RuntimeEndpoint": "radixlm_lang.backend.runtime_endpoint",
    "Runtime": "radixlm_lang.backend.runtime_endpoint",
    "EngineBackend": "radixlm_lang.backend.engine",
    "OpenAI": "radixlm_lang.backend.openai",
    "MockBackend": "radixlm_lang.backend.mock",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'radixlm_lang' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "assistant",
    "assistant_begin",
    "assistant_end",
    "flush_cache",
    "function",
    "gen",
    "gen_int",
    "gen_string",
    "get_server_info",
    "global_config",
    "greedy_token_selection",
    "image",
    "select",
    "set_default_backend",
    "system",
    "system_begin",
    "system_end",
    "token_length_normalized",
    "tool",
    "unconditional_likelihood_normalized",
    "user",
    "user_begin",
    "user_end",
    *_LAZY,
]
