"""One token's own text, its leading space included (logprob token strings).

``decode([id])`` drops what a tokenizer's decoder strips at the start of a text: SentencePiece
models (Llama, Mistral) remove the space of a leading ``▁``, so ``'▁there'`` decodes to
``'there'`` and the tokens of ``", there was"`` no longer join to it. Decoding the token after a
fixed one-token anchor and removing the anchor's text keeps the token as it appears mid-text,
so the strings of consecutive tokens join to the decoded text (up to byte-fallback pieces of
one character, which render as U+FFFD alone, as in every peer).
"""

from __future__ import annotations

from typing import Any

_ANCHOR_CANDIDATES = ("a", "x", "0", ".")


class TokenText:
    """``TokenText(tokenizer)(id)``: the token's text as it appears inside a text."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.anchor: int | None = None
        self.anchor_text = ""
        for cand in _ANCHOR_CANDIDATES:
            ids = tokenizer.encode(cand, add_special_tokens=False)
            if len(ids) == 1:
                self.anchor = ids[0]
                self.anchor_text = tokenizer.decode(ids, skip_special_tokens=False)
                break

    def __call__(self, tid: int) -> str:
        tok = self.tokenizer
        if self.anchor is None:  # no one-token anchor: the plain decode
            return tok.decode([tid], skip_special_tokens=False)
        both = tok.decode([self.anchor, tid], skip_special_tokens=False)
        if not both.startswith(self.anchor_text):  # the decoder rewrote the pair: plain decode
            return tok.decode([tid], skip_special_tokens=False)
        return both[len(self.anchor_text) :]
