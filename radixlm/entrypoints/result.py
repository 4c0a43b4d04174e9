"""Assemble scheduler ``ReqOutput`` deltas into SGLang-shaped result dicts.

``{"text", "output_ids", "meta_info": {"id", "finish_reason", "prompt_tokens",
"completion_tokens", "cached_tokens", "e2e_latency", logprob fields}}``. Text is produced by an
incremental detokenizer. While a request runs with stop strings, the last ``max_stop_len - 1``
characters are held back from streamed text, so the cumulative text a stream shows is always a
prefix of the final (stop-trimmed) text.
"""

from __future__ import annotations

import time
from typing import Any

from radixlm.entrypoints.request import RequestMeta
from radixlm.scheduler.io import ReqOutput
from radixlm.tokenizer.detokenizer import IncrementalDetokenizer


class ResultBuilder:
    def __init__(self, meta: RequestMeta, tokenizer: Any | None) -> None:
        self.meta = meta
        self.tokenizer = tokenizer
        self.created = time.time()
        self.output_ids: list[int] = []
        self.finish_reason: dict[str, Any] | None = None
        self.prompt_tokens = len(meta.prompt_ids)
        self.cached_tokens = 0
        # Logprobs as response tuples [logprob, token_id, text | None], converted once on
        # arrival (a stream re-serialises the result every chunk; decoding token text there
        # again would cost O(n^2) tokenizer calls).
        self.input_token_logprobs: list[list[Any]] = []
        self.input_top_logprobs: list[list[list[Any]] | None] = []
        self.output_token_logprobs: list[list[Any]] = []
        self.output_top_logprobs: list[list[list[Any]] | None] = []
        self.e2e_latency: float | None = None
        self.dirty = False  # updated since a stream last read it
        sp = meta.sampling
        self.detok = (
            IncrementalDetokenizer(
                tokenizer, meta.prompt_ids, sp.skip_special_tokens, sp.spaces_between_special_tokens
            )
            if tokenizer is not None
            else None
        )
        self.text = ""
        self._holdback = max((len(s) for s in sp.stop), default=1) - 1 if not sp.no_stop_trim else 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def update(self, out: ReqOutput) -> None:
        self.dirty = True
        self.output_ids.extend(out.new_token_ids)
        self.cached_tokens = out.cached_tokens
        if out.input_token_logprobs is not None:
            start = max(self.meta.logprob_start_len, 0)
            in_ids = self.meta.prompt_ids[start:]
            self.input_token_logprobs = self._tuples(out.input_token_logprobs, in_ids)
            self.input_top_logprobs = [self._top(t) for t in out.input_top_logprobs or []]
        self.output_token_logprobs += self._tuples(out.output_token_logprobs, out.new_token_ids)
        self.output_top_logprobs += [self._top(t) for t in out.output_top_logprobs]
        if self.detok is not None:
            self.text += self.detok.add(out.new_token_ids)
        if out.finished_reason is not None:
            self.finish_reason = out.finished_reason
            self.e2e_latency = time.time() - self.created
            if self.detok is not None:
                self.text += self.detok.flush()
                self.text = self._trim(self.text)

    def _trim(self, text: str) -> str:
        fr = self.finish_reason or {}
        if fr.get("type") != "stop" or self.meta.sampling.no_stop_trim:
            return text
        matched = fr.get("matched")
        if isinstance(matched, str):
            pos = text.find(matched)
            return text[:pos] if pos != -1 else text
        if isinstance(matched, int) and self.detok is not None and self.output_ids:
            # Drop the matched stop token's own text (special tokens are already skipped).
            tail = self.tokenizer.decode(
                self.output_ids[-1:], skip_special_tokens=self.meta.sampling.skip_special_tokens
            )
            if tail and text.endswith(tail):
                return text[: -len(tail)]
        return text

    def visible_text(self) -> str:
        if self.finished or self._holdback == 0:
            return self.text
        return self.text[: max(0, len(self.text) - self._holdback)]

    def to_dict(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "id": self.meta.rid,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": len(self.output_ids),
            "cached_tokens": self.cached_tokens,
        }
        if self.e2e_latency is not None:
            meta["e2e_latency"] = self.e2e_latency
        if self.meta.return_logprob:
            meta["input_token_logprobs"] = list(self.input_token_logprobs)
            meta["output_token_logprobs"] = list(self.output_token_logprobs)
            if self.meta.top_logprobs_num > 0:
                meta["input_top_logprobs"] = list(self.input_top_logprobs)
                meta["output_top_logprobs"] = list(self.output_top_logprobs)
        return {"text": self.visible_text(), "output_ids": list(self.output_ids), "meta_info": meta}

    def _token_text(self, tid: int) -> str | None:
        if not self.meta.return_text_in_logprobs or self.tokenizer is None:
            return None
        return self.tokenizer.decode([tid], skip_special_tokens=False)

    def _tuples(self, logprobs: list[float | None], ids: list[int]) -> list[list[Any]]:
        return [[lp, tid, self._token_text(tid)] for lp, tid in zip(logprobs, ids)]

    def _top(self, entries: list[tuple[float, int]] | None) -> list[list[Any]] | None:
        if entries is None:
            return None
        return [[lp, tid, self._token_text(tid)] for lp, tid in entries]
