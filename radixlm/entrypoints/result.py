"""Assemble scheduler ``ReqOutput`` deltas into SGLang-shaped result dicts.

``{"text", "output_ids", "meta_info": {"id", "finish_reason", "prompt_tokens",
"completion_tokens", "cached_tokens", "e2e_latency", logprob fields}}``. Text comes either from
an in-process :class:`OutputText` (offline engine) or as deltas from the detokenizer process
(server); either way the cumulative text a stream shows is a prefix of the final text.
"""

from __future__ import annotations

import time
from typing import Any

from radixlm.entrypoints.request import RequestMeta
from radixlm.errors import RadixLMError, RequestError
from radixlm.scheduler.io import ReqOutput
from radixlm.tokenizer.output_text import OutputText
from radixlm.tokenizer.token_text import TokenText


class ResultBuilder:
    """``detokenize=False``: text arrives with each update (the server's detokenizer made it)."""

    def __init__(self, meta: RequestMeta, tokenizer: Any | None, detokenize: bool = True) -> None:
        self.meta = meta
        self.tokenizer = tokenizer
        self._texts: TokenText | None = None  # logprob token strings, made on first use
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
        self.output_text = (
            OutputText(tokenizer, meta.prompt_ids, meta.sampling)
            if tokenizer is not None and detokenize
            else None
        )
        self.text = ""  # visible text
        self.queue_time: float | None = None
        self.error_status: int | None = None  # the request failed for a client error
        self.first_token_time: float | None = None
        self.constraint: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def failure(self) -> RadixLMError | None:
        """The error of a request that failed for a client error (e.g. an invalid grammar)."""
        if self.error_status is None:
            return None
        message = (self.finish_reason or {}).get("message") or "request failed"
        return status_error(message, self.error_status)

    def raise_if_failed(self) -> None:
        err = self.failure()
        if err is not None:
            raise err

    def update(self, out: ReqOutput, text_delta: str | None = None) -> None:
        self.dirty = True
        if out.queue_time is not None:
            self.queue_time = out.queue_time
        if out.error_status is not None:
            self.error_status = out.error_status
        if out.new_token_ids and self.first_token_time is None:
            self.first_token_time = time.time()
        self.output_ids.extend(out.new_token_ids)
        self.cached_tokens = out.cached_tokens
        if out.input_token_logprobs is not None:
            start = max(self.meta.logprob_start_len, 0)
            in_ids = self.meta.prompt_ids[start:]
            self.input_token_logprobs = self._tuples(out.input_token_logprobs, in_ids)
            self.input_top_logprobs = [self._top(t) for t in out.input_top_logprobs or []]
        self.output_token_logprobs += self._tuples(out.output_token_logprobs, out.new_token_ids)
        self.output_top_logprobs += [self._top(t) for t in out.output_top_logprobs]
        if self.output_text is not None:
            self.output_text.add(out.new_token_ids, out.finished_reason)
            self.text = self.output_text.visible()
        elif text_delta:
            self.text += text_delta
        if out.constraint is not None:
            self.constraint = out.constraint
        if out.finished_reason is not None:
            self.finish_reason = out.finished_reason
            self.e2e_latency = time.time() - self.created

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
        if self.constraint is not None:
            meta["constraint"] = self.constraint
        if self.meta.return_logprob:
            meta["input_token_logprobs"] = list(self.input_token_logprobs)
            meta["output_token_logprobs"] = list(self.output_token_logprobs)
            if self.meta.top_logprobs_num > 0:
                meta["input_top_logprobs"] = list(self.input_top_logprobs)
                meta["output_top_logprobs"] = list(self.output_top_logprobs)
        return {"text": self.text, "output_ids": list(self.output_ids), "meta_info": meta}

    def _token_text(self, tid: int) -> str | None:
        if not self.meta.return_text_in_logprobs or self.tokenizer is None:
            return None
        if self._texts is None:
            self._texts = TokenText(self.tokenizer)
        return self._texts(tid)

    def _tuples(self, logprobs: list[float | None], ids: list[int]) -> list[list[Any]]:
        return [[lp, tid, self._token_text(tid)] for lp, tid in zip(logprobs, ids)]

    def _top(self, entries: list[tuple[float, int]] | None) -> list[list[Any]] | None:
        if entries is None:
            return None
        return [[lp, tid, self._token_text(tid)] for lp, tid in entries]


def status_error(message: str, status: int) -> RadixLMError:
    """An error reported as (message, HTTP status) by the scheduler, raised here again: a
    :class:`RequestError` for a client error (4xx)."""
    err = RequestError(message) if status < 500 else RadixLMError(message)
    err.http_status = status
    return err
