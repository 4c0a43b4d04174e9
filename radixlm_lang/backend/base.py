"""The interface between the DSL interpreter and a model backend.

The interpreter never talks HTTP or touches an engine: at each ``gen`` / ``select`` it hands
the backend a ``Prompt`` (the program's text so far, its chat messages, its images) and the
resolved ``SamplingParams`` of the DSL, and gets text plus the server's ``meta_info`` back.

Backends that speak SGLang's native ``/generate`` shape (our server, SGLang's server, the
in-process engine) share one implementation of ``generate`` / ``select`` / ``cache_prefix``
(``NativeBackend``); they only differ in how a native request body is delivered.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Prompt:
    text: str  # the full program text so far (roles rendered by the chat template)
    messages: list[dict[str, Any]] = field(default_factory=list)  # OpenAI-style
    images: list[str] = field(default_factory=list)  # base64 data, at most one sent natively


@dataclass
class ChoicesDecision:
    decision: str
    meta_info: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    """What the interpreter calls. ``params`` is ``radixlm_lang.ir.SamplingParams``."""

    is_chat_model: bool = False  # True: the backend wants ``messages``, not ``text``

    @abstractmethod
    def get_model_name(self) -> str: ...

    @abstractmethod
    def get_chat_template(self) -> Any:
        """The ``radixlm_lang.chat_template.ChatTemplate`` to render roles with."""

    @abstractmethod
    def generate(self, prompt: Prompt, params: Any) -> tuple[str, dict[str, Any]]:
        """The completion text of one ``gen`` and its ``meta_info``."""

    def generate_tools(self, prompt: Prompt, params: Any, tools: Any) -> Any:
        """One chat turn in which the model may call ``tools`` (a
        ``radixlm_lang.tools.ToolSpec``): a ``ToolOutput`` (text, content, OpenAI-form calls).
        ``prompt.messages`` is the chat so far; the assistant turn has just begun."""
        from radixlm_lang.tools import ToolsUnsupportedError

        raise ToolsUnsupportedError(
            f"the {type(self).__name__} backend cannot serve gens with tools; use EngineBackend, "
            "RuntimeEndpoint or an OpenAI chat backend"
        )

    def generate_stream(self, prompt: Prompt, params: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield (new text delta, meta_info so far); default: one chunk from ``generate``."""
        yield self.generate(prompt, params)

    @abstractmethod
    def select(
        self, prompt: Prompt, choices: list[str], temperature: float, choices_method: Any
    ) -> ChoicesDecision: ...

    def cache_prefix(self, text: str) -> None:  # noqa: B027 - optional hook
        """Prefill ``text`` so later requests sharing it hit the prefix cache (no-op if the
        backend has no cache)."""

    def flush_cache(self) -> bool:
        return False

    def get_server_info(self) -> dict[str, Any]:
        return {}

    def shutdown(self) -> None:  # noqa: B027 - optional hook
        pass
