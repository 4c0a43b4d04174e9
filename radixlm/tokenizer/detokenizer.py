"""Incremental detokenization: turn a growing list of token ids into text, chunk by chunk.

Decoding token by token is wrong for most tokenizers (SentencePiece drops a word's leading
space at the start of a decode, byte-level BPE splits multi-byte characters across tokens).
So, like vLLM/SGLang, we decode a short window twice — ``ids[surr:read]`` (already emitted)
and ``ids[surr:]`` — and emit the difference. If the new text ends in U+FFFD the last
character is an incomplete UTF-8 sequence: nothing is emitted until a later token completes
it (``flush`` emits whatever is left when the request ends).

Invariant: the concatenation of everything returned equals ``decode(output_ids)`` as the
tokenizer would render it after the prompt (prompt tokens provide the left context).
"""

from __future__ import annotations

from typing import Any

# Prompt tokens kept as left context: enough for SentencePiece's leading-space rule and for
# byte-fallback sequences that straddle the prompt/output boundary.
CONTEXT_TOKENS = 5
MAX_EXTRA_CONTEXT = 16  # how far left to look for the start of a character


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Any,
        prompt_ids: list[int],
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self._kwargs = {
            "skip_special_tokens": skip_special_tokens,
            "spaces_between_special_tokens": spaces_between_special_tokens,
        }
        self.ids: list[int] = self._context(prompt_ids)
        self.read_offset = len(self.ids)
        self.surr_offset = 0
        self.text = ""  # everything emitted so far

    def _context(self, prompt_ids: list[int]) -> list[int]:
        """The last few prompt tokens, extended left so the context does not start inside a
        multi-byte character (a partial character would garble the output's first bytes)."""
        start = max(len(prompt_ids) - CONTEXT_TOKENS, 0)
        floor = max(start - MAX_EXTRA_CONTEXT, 0)
        while start > floor and self._decode(prompt_ids[start:]).startswith("\ufffd"):
            start -= 1
        return list(prompt_ids[start:])

    def _decode(self, ids: list[int]) -> str:
        try:
            return self.tokenizer.decode(ids, **self._kwargs)
        except TypeError:  # fast tokenizers may not know spaces_between_special_tokens
            return self.tokenizer.decode(
                ids, skip_special_tokens=self._kwargs["skip_special_tokens"]
            )

    def add(self, new_ids: list[int]) -> str:
        """Append tokens; return the newly completed text (possibly empty)."""
        self.ids.extend(new_ids)
        return self._advance(final=False)

    def flush(self) -> str:
        """Emit any held-back text (an incomplete character becomes U+FFFD)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self.read_offset >= len(self.ids):
            return ""
        prefix = self._decode(self.ids[self.surr_offset : self.read_offset])
        full = self._decode(self.ids[self.surr_offset :])
        if len(full) <= len(prefix) and not final:
            return ""
        if full.endswith("\ufffd") and not final:
            return ""
        delta = full[len(prefix) :]
        self.surr_offset = self.read_offset
        self.read_offset = len(self.ids)
        self.text += delta
        return delta
