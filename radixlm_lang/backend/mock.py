"""``MockBackend``: a deterministic, recording backend for tests of the DSL.

Outputs are scripted: ``responses`` is a callable ``(prompt, params) -> str`` or a sequence of
strings consumed in call order (when it runs out, or when none is given, the k-th generation
returns ``"gen{k}"``). ``select`` either scores choices with scripted token logprobs through the
real ``choices`` math, or picks the first choice. Every call is appended to ``calls`` (thread
safe). ``delay`` slows calls down (seconds, or ``(kind, prompt) -> seconds``); ``errors``
``(kind, prompt) -> Exception | None`` makes a call fail. ``meta_info.cached_tokens`` counts the
*characters* of the longest ``cache_prefix`` text the prompt starts with.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from radixlm_lang.backend.base import Backend, ChoicesDecision, Prompt
from radixlm_lang.chat_template import ChatTemplate, get_chat_template
from radixlm_lang.choices import heal_and_normalize

Logprobs = list[list[Any]]  # [[logprob, token_id, token_text], ...]


@dataclass
class MockCall:
    kind: str  # "generate" | "generate_stream" | "select" | "cache_prefix" | "flush_cache"
    prompt: Prompt | None
    params: Any = None
    choices: list[str] | None = None
    output: Any = None
    start: float = field(default_factory=time.perf_counter)


class MockBackend(Backend):
    def __init__(
        self,
        responses: Callable[[Prompt, Any], str] | Sequence[str] | None = None,
        *,
        chat_template: str | ChatTemplate = "default",
        model_name: str = "mock-model",
        is_chat_model: bool = False,
        delay: float | Callable[[str, Prompt | None], float] = 0.0,
        errors: Callable[[str, Prompt | None], Exception | None] | None = None,
        stream_chunk_chars: int = 3,
        select_logprobs: Callable[[Prompt, list[str]], list[Logprobs]] | None = None,
        unconditional_logprobs: Callable[[list[str]], list[Logprobs]] | None = None,
    ) -> None:
        self.responses = responses if callable(responses) else deque(responses or ())
        self.chat_template = (
            get_chat_template(chat_template) if isinstance(chat_template, str) else chat_template
        )
        self.model_name = model_name
        self.is_chat_model = is_chat_model
        self.delay = delay
        self.errors = errors
        self.stream_chunk_chars = stream_chunk_chars
        self.select_logprobs = select_logprobs
        self.unconditional_logprobs = unconditional_logprobs
        self.calls: list[MockCall] = []
        self.cached_prefixes: list[str] = []
        self._lock = threading.Lock()
        self._n_gen = 0

    # ---- helpers ----------------------------------------------------------------------------
    def calls_of(self, kind: str) -> list[MockCall]:
        with self._lock:
            return [c for c in self.calls if c.kind == kind]

    def _enter(self, kind: str, prompt: Prompt | None, **kw: Any) -> MockCall:
        call = MockCall(kind, prompt, **kw)
        with self._lock:
            self.calls.append(call)
        error = self.errors(kind, prompt) if self.errors else None
        delay = self.delay(kind, prompt) if callable(self.delay) else self.delay
        if delay:
            time.sleep(delay)
        if error is not None:
            raise error
        return call

    def _next_output(self, prompt: Prompt, params: Any) -> str:
        with self._lock:
            k = self._n_gen
            self._n_gen += 1
            if not callable(self.responses) and self.responses:
                return self.responses.popleft()
        if callable(self.responses):
            return self.responses(prompt, params)
        return f"gen{k}"

    def _meta(self, prompt: Prompt, output: str) -> dict[str, Any]:
        with self._lock:
            hits = [len(p) for p in self.cached_prefixes if prompt.text.startswith(p)]
        return {
            "prompt_tokens": len(prompt.text.split()),
            "completion_tokens": len(output.split()),
            "cached_tokens": max(hits, default=0),
            "finish_reason": {"type": "stop", "matched": None},
        }

    # ---- Backend ----------------------------------------------------------------------------
    def get_model_name(self) -> str:
        return self.model_name

    def get_chat_template(self) -> ChatTemplate:
        return self.chat_template

    def generate(self, prompt: Prompt, params: Any) -> tuple[str, dict[str, Any]]:
        call = self._enter("generate", prompt, params=params)
        call.output = self._next_output(prompt, params)
        return call.output, self._meta(prompt, call.output)

    def generate_stream(self, prompt: Prompt, params: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        call = self._enter("generate_stream", prompt, params=params)
        call.output = self._next_output(prompt, params)
        size = max(1, self.stream_chunk_chars)
        for i in range(0, len(call.output), size):
            if i and not callable(self.delay) and self.delay:
                time.sleep(self.delay)
            yield call.output[i : i + size], self._meta(prompt, call.output[: i + size])

    def select(
        self, prompt: Prompt, choices: list[str], temperature: float, choices_method: Any
    ) -> ChoicesDecision:
        call = self._enter("select", prompt, choices=list(choices))
        if self.select_logprobs is None:
            decision = ChoicesDecision(choices[0], {})
        else:
            entries, means = heal_and_normalize(prompt.text, self.select_logprobs(prompt, choices))
            uncond = None
            if getattr(choices_method, "requires_unconditional_logprobs", False):
                assert self.unconditional_logprobs is not None, "script unconditional_logprobs"
                uncond = self.unconditional_logprobs(choices)
            decision = choices_method(
                choices=choices,
                normalized_prompt_logprobs=means,
                input_token_logprobs=entries,
                output_token_logprobs=[[] for _ in choices],
                unconditional_token_logprobs=uncond,
            )
        call.output = decision.decision
        return decision

    def cache_prefix(self, text: str) -> None:
        self._enter("cache_prefix", Prompt(text))
        with self._lock:
            self.cached_prefixes.append(text)

    def flush_cache(self) -> bool:
        self._enter("flush_cache", None)
        with self._lock:
            self.cached_prefixes.clear()
        return True

    def get_server_info(self) -> dict[str, Any]:
        return {"model_path": self.model_name, "backend": "mock"}
