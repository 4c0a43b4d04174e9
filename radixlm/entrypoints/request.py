"""Normalise a generate call (single or batch, text or ids, ``n`` samples) into scheduler requests.

Shared by the offline ``Engine`` and the HTTP tokenizer manager so both validate identically.
All validation happens here, before anything is submitted: one bad item rejects the whole call
with a :class:`RequestError` and leaves the engine untouched.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from radixlm.errors import RequestError
from radixlm.sampling_params import SamplingParams
from radixlm.scheduler.io import TokenizedRequest


@dataclass
class RequestMeta:
    """Per-request facts the result builder needs (not sent to the scheduler)."""

    rid: str
    index: int  # position in the returned list
    prompt_ids: list[int]
    sampling: SamplingParams
    return_logprob: bool
    logprob_start_len: int
    top_logprobs_num: int
    return_text_in_logprobs: bool


def _per_item(value: Any, n: int, name: str, types: tuple[type, ...]) -> list[Any]:
    if isinstance(value, list):
        if len(value) != n:
            raise RequestError(f"{name} has {len(value)} entries but there are {n} prompts")
        items = value
    else:
        items = [value] * n
    for v in items:
        if v is not None and (
            not isinstance(v, types) or (bool not in types and isinstance(v, bool))
        ):
            raise RequestError(
                f"{name} must be {' or '.join(t.__name__ for t in types)}, got {v!r}"
            )
    return items


def _is_id_list(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def build_requests(
    *,
    text: str | list[str] | None,
    input_ids: list[int] | list[list[int]] | None,
    sampling_params: dict | list[dict] | None,
    rid: str | list[str] | None,
    return_logprob: bool | list[bool] | None,
    logprob_start_len: int | list[int] | None,
    top_logprobs_num: int | list[int] | None,
    return_text_in_logprobs: bool,
    stream: bool,
    tokenizer: Any | None,
    vocab_size: int,
    cache_salt: str | list[str] | None = None,
    extra_key: str | list[str] | None = None,
    reasoning_markers: tuple[int, int] | None = None,
    max_n: int | None = None,
) -> tuple[list[TokenizedRequest], list[RequestMeta], bool]:
    """Returns (requests to submit, their metadata in output order, whether the call is a batch)."""
    if (text is None) == (input_ids is None):
        raise RequestError("pass exactly one of text/prompt and input_ids")
    if text is not None:
        if isinstance(text, str):
            prompts, is_batch = [text], False
        elif isinstance(text, list) and text and all(isinstance(t, str) for t in text):
            prompts, is_batch = list(text), True
        else:
            raise RequestError(
                "text/prompt must be a non-empty string or a non-empty list of strings"
            )
        if tokenizer is None:
            raise RequestError(
                "this engine runs without a tokenizer; pass input_ids instead of text"
            )
        for p in prompts:
            if p == "":
                raise RequestError("the prompt is empty; send a non-empty string")
        ids_list = [tokenizer.encode(p) for p in prompts]
    else:
        if _is_id_list(input_ids):
            ids_list, is_batch = [list(input_ids)], False
        elif isinstance(input_ids, list) and input_ids and all(_is_id_list(x) for x in input_ids):
            ids_list, is_batch = [list(x) for x in input_ids], True
        else:
            raise RequestError(
                "input_ids must be a list of token ids or a non-empty list of such lists"
            )
    for ids in ids_list:
        if not ids:
            raise RequestError("the prompt is empty; send at least one token")
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise RequestError(
                f"input_ids hold ids outside the vocabulary [0, {vocab_size}): {bad[:5]}"
            )

    num = len(ids_list)
    sp_items = _per_item(sampling_params, num, "sampling_params", (dict,))
    lp_items = _per_item(return_logprob, num, "return_logprob", (bool,))
    start_items = _per_item(logprob_start_len, num, "logprob_start_len", (int,))
    top_items = _per_item(top_logprobs_num, num, "top_logprobs_num", (int,))
    salt_items = _per_item(cache_salt, num, "cache_salt", (str,))
    extra_items = _per_item(extra_key, num, "extra_key", (str,))
    if not isinstance(return_text_in_logprobs, bool):
        raise RequestError("return_text_in_logprobs must be true or false")
    if not isinstance(stream, bool):
        raise RequestError("stream must be true or false")
    params = [SamplingParams.from_dict(sp, vocab_size) for sp in sp_items]
    if max_n is not None and any(p.n > max_n for p in params):
        worst = max(p.n for p in params)
        raise RequestError(
            f"n={worst} asks for more samples than this server allows per request ({max_n}, "
            "--max-n); send several requests or lower n"
        )
    for p in params:
        if p.stop and tokenizer is None:
            raise RequestError("stop strings need a tokenizer; use stop_token_ids instead")
    if any(p.n > 1 for p in params):
        is_batch = True
    rids = _rids(rid, num, is_batch)

    requests: list[TokenizedRequest] = []
    metas: list[RequestMeta] = []
    for i, (ids, sp) in enumerate(zip(ids_list, params)):
        want_lp = bool(lp_items[i])
        start = -1 if start_items[i] is None else start_items[i]
        if start < -1:
            raise RequestError(f"logprob_start_len must be >= -1, got {start}")
        top = 0 if top_items[i] is None else top_items[i]
        if top < 0:
            raise RequestError(f"top_logprobs_num must be >= 0, got {top}")
        for k in range(sp.n):
            r = rids[i] if sp.n == 1 else f"{rids[i]}_{k}"
            requests.append(
                TokenizedRequest(
                    rid=r,
                    input_ids=ids,
                    sampling=sp,
                    stream=stream,
                    return_logprob=want_lp,
                    logprob_start_len=start,
                    top_logprobs_num=top,
                    seed_offset=k,
                    cache_salt=salt_items[i],
                    extra_key=extra_items[i],
                    reasoning_markers=reasoning_markers,
                )
            )
            metas.append(
                RequestMeta(
                    rid=r,
                    index=len(metas),
                    prompt_ids=ids,
                    sampling=sp,
                    return_logprob=want_lp,
                    logprob_start_len=start,
                    top_logprobs_num=top,
                    return_text_in_logprobs=return_text_in_logprobs,
                )
            )
    if len({r.rid for r in requests}) != len(requests):
        raise RequestError("request ids must be unique within a call")
    return requests, metas, is_batch


def _rids(rid: str | list[str] | None, num: int, is_batch: bool) -> list[str]:
    if rid is None:
        return [uuid.uuid4().hex for _ in range(num)]
    if isinstance(rid, str):
        return [rid] if num == 1 else [f"{rid}_{i}" for i in range(num)]
    if isinstance(rid, list) and len(rid) == num and all(isinstance(r, str) for r in rid):
        return list(rid)
    raise RequestError(f"rid must be a string or a list of {num} strings")
