"""RadixLM: a prefix-sharing LLM serving runtime.

``radixlm.Engine`` is imported lazily so ``import radixlm`` stays cheap (no torch import).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from radixlm.errors import (
    CapacityError,
    ConfigError,
    GrammarError,
    ModelLoadError,
    RadixLMError,
    RequestError,
)

__version__ = "0.1.0"

__all__ = [
    "Engine",
    "EngineConfig",
    "RadixLMError",
    "ConfigError",
    "RequestError",
    "GrammarError",
    "CapacityError",
    "ModelLoadError",
]

if TYPE_CHECKING:
    from radixlm.config import EngineConfig
    from radixlm.entrypoints.engine import Engine


def __getattr__(name: str):
    if name == "Engine":
        from radixlm.entrypoints.engine import Engine

        return Engine
    if name == "EngineConfig":
        from radixlm.config import EngineConfig

        return EngineConfig
    raise AttributeError(f"module 'radixlm' has no attribute {name!r}")
