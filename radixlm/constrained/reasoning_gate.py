"""A constraint that starts when the model's reasoning ends (``--reasoning-parser``).

Reasoning models (DeepSeek-R1, Qwen3, QwQ) write ``<think> … </think>`` before the answer. A
JSON schema, regex or tool-call grammar describes the answer, not the thinking, so a
:class:`ReasoningGate` wraps the request's matcher and holds it back until the thinking ends:

- ``thinking`` (the prompt left the model inside ``<think>``, or it has just written it): every
  token but the stop tokens is allowed (the answer the constraint asks for is still owed);
  the end-of-thinking token opens the gate.
- ``pending`` (the prompt is not inside a thinking block, and the model may open one): the
  inner grammar's tokens are allowed, and so is the start-of-thinking token, which switches
  to ``thinking``; any other token is the answer's first token and opens the gate.
- ``open`` (also where the prompt has just closed an empty block, as Qwen3's template does
  with ``enable_thinking: false``): the inner matcher decides everything.

Invariants: the markers are single token ids (the tokenizers of these model families have them
as added tokens; the server refuses ``require_reasoning`` otherwise); the inner matcher only
ever sees the answer's tokens, so ``rollback`` and ``copy`` keep one log entry per consumed
token and undo exactly the inner advances among the last ``n``; :attr:`content_start` is the
index in the output of the answer's first token (what the output check validates).
"""

from __future__ import annotations

import torch

from radixlm.constrained.base import GrammarMatcher

# Log entries, one per consumed token.
_START, _THINK, _END, _INNER = "s", "t", "e", "i"


def _bit(bit: int) -> int:
    """``1 << bit`` as the int32 value with that bit pattern."""
    return (1 << bit) - (1 << 32 if bit == 31 else 0)


class ReasoningGate(GrammarMatcher):
    def __init__(
        self,
        inner: GrammarMatcher,
        start_id: int,
        end_id: int,
        initial: str,
        stop_ids: tuple[int, ...] = (),
    ) -> None:
        self.inner = inner
        self.stop_ids = stop_ids
        self.start_id = start_id
        self.end_id = end_id
        self.initial = initial  # reasoning.prompt_phase of the request's prompt
        self.log: list[str] = []

    @property
    def phase(self) -> str:
        if not self.log:
            return self.initial
        return "thinking" if self.log[-1] in (_START, _THINK) else "open"

    @property
    def content_start(self) -> int:
        """Output index of the answer's first token (``len(log)`` while it has none)."""
        for i in range(len(self.log) - 1, -1, -1):
            if self.log[i] != _INNER:
                return i + 1
        return 0

    def fill_mask(self, mask: torch.Tensor, row: int) -> None:
        phase = self.phase
        if phase == "thinking":
            mask[row] = -1
            for t in self.stop_ids:
                word, bit = divmod(t, 32)
                mask[row, word] &= ~_bit(bit)
            return
        self.inner.fill_mask(mask, row)
        if phase == "pending":
            word, bit = divmod(self.start_id, 32)
            mask[row, word] |= _bit(bit)

    def advance(self, token_id: int) -> bool:
        phase = self.phase
        if phase == "thinking":
            self.log.append(_END if token_id == self.end_id else _THINK)
            return True
        if phase == "pending" and token_id == self.start_id:
            self.log.append(_START)
            return True
        if not self.inner.advance(token_id):
            return False
        self.log.append(_INNER)
        return True

    def error(self) -> str | None:
        return self.inner.error()

    def is_terminated(self) -> bool:
        return self.phase != "thinking" and self.inner.is_terminated()

    def is_final(self) -> bool:
        return self.phase != "thinking" and self.inner.is_final()

    def rollback(self, num_tokens: int) -> None:
        if num_tokens <= 0:
            return
        undone = self.log[len(self.log) - num_tokens :]
        del self.log[len(self.log) - num_tokens :]
        inner = undone.count(_INNER)
        if inner:
            self.inner.rollback(inner)

    def copy(self) -> ReasoningGate:
        gate = ReasoningGate(
            self.inner.copy(), self.start_id, self.end_id, self.initial, self.stop_ids
        )
        gate.log = list(self.log)
        return gate

    def forced_bytes(self) -> bytes:
        return self.inner.forced_bytes() if self.phase == "open" else b""
