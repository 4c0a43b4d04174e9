"""``OutputText``: the visible text of one request's output, built token chunk by chunk.

Used in-process by the offline engine and, in the server, by the detokenizer process. While
the request runs with stop strings, the last ``max_stop_len - 1`` characters are held back, so
the visible text only ever grows: everything shown before the finish is a prefix of the final
(stop-trimmed) text, and ``take_delta`` can hand out increments.
"""

from __future__ import annotations

from typing import Any

from radixlm.sampling_params import SamplingParams
from radixlm.tokenizer.detokenizer import IncrementalDetokenizer


class OutputText:
    def __init__(self, tokenizer: Any, prompt_ids: list[int], sampling: SamplingParams) -> None:
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.detok = IncrementalDetokenizer(
            tokenizer,
            prompt_ids,
            sampling.skip_special_tokens,
            sampling.spaces_between_special_tokens,
        )
        self.text = ""
        self.finished = False
        self._holdback = (
            max((len(s) for s in sampling.stop), default=1) - 1 if not sampling.no_stop_trim else 0
        )
        self._sent = 0
        self._last_start = 0  # where the finishing (last) token's text starts in ``text``

    def add(self, new_ids: list[int], finish_reason: dict[str, Any] | None) -> None:
        """Append tokens; on the last call pass the request's finish reason (trims the stop)."""
        if finish_reason is None:
            self.text += self.detok.add(new_ids)
            return
        # The scheduler matched the stop on the last token: the stop token itself, or a stop
        # string ending in its text (an earlier occurrence, while ``min_new_tokens`` suppressed
        # stops, must stay; the stream may have shown it already).
        self.text += self.detok.add(new_ids[:-1])
        self._last_start = len(self.text)
        self.text += self.detok.add(new_ids[-1:]) + self.detok.flush()
        self.finished = True
        self.text = self._trim(self.text, finish_reason)

    def _trim(self, text: str, fr: dict[str, Any]) -> str:
        if fr.get("type") != "stop" or self.sampling.no_stop_trim:
            return text
        matched = fr.get("matched")
        if isinstance(matched, str):
            # The earliest occurrence that ends in the last token's text (as the scheduler's
            # stop check finds it); else the first one.
            pos = text.find(matched, max(0, self._last_start - len(matched) + 1))
            if pos == -1:
                pos = text.find(matched)
            return text[:pos] if pos != -1 else text
        if isinstance(matched, int):
            # Drop the matched stop token's text in context (SentencePiece's leading space
            # included, which decoding the token alone would lose).
            return text[: self._last_start]
        return text

    def visible(self) -> str:
        if self.finished or self._holdback == 0:
            return self.text
        return self.text[: max(0, len(self.text) - self._holdback)]

    def take_delta(self) -> str:
        """Visible text not handed out yet."""
        vis = self.visible()
        delta = vis[self._sent :]
        self._sent = max(self._sent, len(vis))
        return delta
