"""Process-wide settings of the DSL (SGLang's ``global_config``; the only global state).

``default_backend`` is set by ``set_default_backend``; ``verbosity >= 2`` logs each program's
final text; ``enable_precache_with_tracing`` lets ``run_batch`` prefill the traced constant
prefix of a program once before the batch.
"""

from __future__ import annotations

from typing import Any


class GlobalConfig:
    def __init__(self) -> None:
        self.default_backend: Any = None
        self.verbosity: int = 0
        self.enable_precache_with_tracing: bool = True
        self.precache_min_prefix_chars: int = 64  # a traced prefix must be longer than this
        self.skip_special_tokens_in_output: bool = True
        self.spaces_between_special_tokens_in_out: bool = True
        self.enable_parallel_encoding: bool = True


global_config = GlobalConfig()
