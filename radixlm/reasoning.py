"""Reasoning output (``--reasoning-parser``): the thinking block apart from the answer.

Reasoning models write ``<think> … </think>`` and then the answer. DeepSeek-R1's template opens
the block in the prompt (the output starts inside it); Qwen3's lets the model open it, and with
``enable_thinking: false`` closes an empty one in the prompt. So whether an output starts inside
the block is read from the prompt (its last marker), not assumed per family.

:meth:`ReasoningFormat.split` turns a cumulative output into ``(reasoning, content)``:

- the reasoning is the text between the markers (markers dropped); an output cut off while
  thinking is all reasoning;
- the content is the text after ``</think>`` with its leading whitespace dropped, or the whole
  output when it has no thinking block.

Invariants: with ``final=False`` both parts only grow as the output grows (a tail that could
still become a marker is held back), so a stream can send differences; with ``final=True``
nothing is held back, and the result equals what a non-streamed response returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ReasoningFormat:
    name: str
    start: str = "<think>"
    end: str = "</think>"

    def starts_inside(self, prompt_text: str) -> bool:
        """True when the prompt leaves the model inside a thinking block."""
        return prompt_text.rfind(self.start) > prompt_text.rfind(self.end)

    def split(self, text: str, inside: bool, final: bool = True) -> tuple[str, str]:
        """``(reasoning, content)`` of the cumulative output ``text``; ``inside``: the prompt
        left the model inside a thinking block."""
        if not inside:
            head = text.lstrip()
            if not head.startswith(self.start):
                if not final and head and self.start.startswith(head):
                    return "", ""  # may still become "<think>"
                if not final and not head:
                    return "", ""
                return "", text
            text = head[len(self.start) :]
        i = text.find(self.end)
        if i == -1:
            return (text if final else text[: _safe_end(text, self.end)]), ""
        return text[:i], text[i + len(self.end) :].lstrip()

    def marker_ids(self, tokenizer: Any) -> tuple[int, int] | None:
        """``(start_id, end_id)`` when both markers are single tokens of ``tokenizer`` (what a
        constraint after the reasoning needs), else None."""
        ids = [tokenizer.encode(m, add_special_tokens=False) for m in (self.start, self.end)]
        if all(len(x) == 1 for x in ids):
            return ids[0][0], ids[1][0]
        return None


# How many tokens a template writes after the ``</think>`` of an empty block it closes for the
# model (Qwen3 with ``enable_thinking: false`` ends the prompt with ``</think>\n\n``).
_CLOSED_TAIL = 4


def prompt_phase(prompt_ids: Sequence[int], start_id: int, end_id: int) -> str:
    """Where a prompt leaves the model: ``thinking`` (its last marker opens a block, as
    DeepSeek-R1's template does), ``open`` (the template has just closed a block: the answer
    comes next), or ``pending`` (the model may open a block itself, as Qwen3 does)."""
    n = len(prompt_ids)
    for i in range(n - 1, -1, -1):
        t = prompt_ids[i]
        if t == start_id:
            return "thinking"
        if t == end_id:
            return "open" if n - 1 - i <= _CLOSED_TAIL else "pending"
    return "pending"


def _safe_end(text: str, marker: str) -> int:
    """End of ``text`` without a tail that could be the start of ``marker``."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            return len(text) - k
    return len(text)


FORMATS = {name: ReasoningFormat(name) for name in ("deepseek-r1", "qwen3")}
# Names SGLang and vLLM users pass to --reasoning-parser for the same <think> format.
ALIASES = {"deepseek_r1": "deepseek-r1", "qwq": "qwen3", "qwen3-thinking": "qwen3"}


def get_reasoning_format(name: str) -> ReasoningFormat:
    key = ALIASES.get(name, name)
    if key not in FORMATS:
        known = ", ".join(sorted(set(FORMATS) | set(ALIASES)))
        raise ValueError(f"unknown reasoning parser {name!r} (known: {known})")
    return FORMATS[key]


class ReasoningStream:
    """Cumulative output in, reasoning delta and cumulative content out: the same split as
    :meth:`ReasoningFormat.split`, but incremental (the end marker is searched only in the new
    text, and once found the content is a slice), so a long thinking costs O(new text) per
    chunk."""

    def __init__(self, fmt: ReasoningFormat, inside: bool) -> None:
        self.fmt = fmt
        self._body_at: int | None = 0 if inside else None  # where the reasoning starts
        self._sent = 0  # reasoning sent up to here (an offset in the text)
        self._scanned = 0  # the end marker is not in the text before here
        self._content_at: int | None = None  # where the content starts
        self._strip = True  # the content after </think> loses its leading whitespace

    def feed(self, text: str, final: bool) -> tuple[str, str]:
        """``(reasoning delta, cumulative content)`` of the cumulative output ``text``."""
        fmt = self.fmt
        if self._body_at is None and self._content_at is None:  # does a block open?
            head = text.lstrip()
            if head.startswith(fmt.start):
                self._body_at = len(text) - len(head) + len(fmt.start)
                self._sent = self._scanned = self._body_at
            elif not final and (not head or fmt.start.startswith(head)):
                return "", ""
            else:
                self._content_at, self._strip = 0, False  # no thinking block: all content
        if self._content_at is not None:
            content = text[self._content_at :]
            return "", content.lstrip() if self._strip else content
        i = text.find(fmt.end, max(self._body_at, self._scanned - len(fmt.end) + 1))
        if i != -1:
            delta = text[self._sent : i]
            self._content_at = i + len(fmt.end)
            return delta, text[self._content_at :].lstrip()
        self._scanned = len(text)
        stop = len(text) if final else max(self._sent, _safe_end(text, fmt.end))
        delta, self._sent = text[self._sent : stop], stop
        return delta, ""
