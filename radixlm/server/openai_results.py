"""OpenAI protocol results: native ``/generate`` results → OpenAI responses and stream chunks.

Pure functions and a small stream state; no I/O (``openai_api`` does the HTTP; requests are
parsed into an :class:`~radixlm.server.openai_protocol.OpenAICall` by ``openai_protocol``).
Covers finish reasons, usage, logprob formatting (legacy completion and chat shapes) and the
per-choice deltas of a stream.

Choice ``index = prompt_i * n + k`` (the native order). Usage counts each distinct prompt once
even with ``n > 1``; ``cached_tokens`` is the smallest cache hit among a prompt's samples (the
prompt was computed at least once). An aborted request is an error
(:class:`RequestAbortedError`, 503), never a choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from radixlm.errors import RadixLMError
from radixlm.function_call.formats import ToolCall
from radixlm.function_call.streaming import ToolStream
from radixlm.reasoning import ReasoningStream
from radixlm.server.openai_protocol import OpenAICall


class RequestAbortedError(RadixLMError):
    """The engine aborted the request (admin abort, shutdown); the client may retry."""

    http_status = 503


def as_list(item: dict | list[dict]) -> list[dict]:
    """A native non-stream item as a list of results in choice order."""
    return item if isinstance(item, list) else [item]


def finish_reason(meta: dict[str, Any]) -> tuple[str | None, Any]:
    """(OpenAI ``finish_reason``, ``matched_stop``); raises RequestAbortedError on an abort."""
    fr = meta.get("finish_reason")
    if fr is None:
        return None, None
    if fr.get("type") == "abort":
        raise RequestAbortedError(f"the request was aborted: {fr.get('message') or 'no reason'}")
    if fr.get("type") == "length":
        return "length", None
    return "stop", fr.get("matched")


def usage(call: OpenAICall, metas: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Usage over all choices; each distinct prompt counted once (see module docstring)."""
    prompt = cached = 0
    for g in range(call.num_prompts):
        group = [m for m in metas[g * call.n : (g + 1) * call.n] if m]
        if group:
            prompt += group[0]["prompt_tokens"]
            cached += min(m.get("cached_tokens", 0) for m in group)
    completion = sum(m["completion_tokens"] for m in metas if m)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _safe(lp: float | None, none: float | None = None) -> float | None:
    """JSON-safe logprob: ``none`` for a missing one, -9999.0 (OpenAI's floor) for -inf/nan."""
    if lp is None:
        return none
    return lp if math.isfinite(lp) else -9999.0


def _entries(meta: dict, with_input: bool, skip_out: int = 0) -> tuple[list, list | None]:
    """Logprob entries ``[lp, id, text]`` (prompt ones first when ``with_input``) and their
    top alternatives (None when the request asked for none)."""
    ins = (meta.get("input_token_logprobs") or []) if with_input else []
    entries = list(ins) + (meta.get("output_token_logprobs") or [])[skip_out:]
    if "output_top_logprobs" not in meta:
        return entries, None
    in_tops = (meta.get("input_top_logprobs") or [None] * len(ins)) if with_input else []
    return entries, list(in_tops) + meta["output_top_logprobs"][skip_out:]


def completion_logprobs(entries: list, tops: list | None, offset: int) -> tuple[dict, int]:
    """The legacy ``logprobs`` object; ``text_offset`` counts characters of the token texts from
    ``offset``. Returns it and the offset after the last token."""
    tokens, lps, offsets, top_out = [], [], [], []
    for j, (lp, _tid, text) in enumerate(entries):
        tokens.append(text or "")
        lps.append(_safe(lp))
        offsets.append(offset)
        offset += len(text or "")
        if tops is not None:
            alts = tops[j] if j < len(tops) else None
            top_out.append(None if alts is None else {a[2] or "": _safe(a[0]) for a in alts})
    out = {
        "tokens": tokens,
        "token_logprobs": lps,
        "top_logprobs": top_out if tops is not None else None,
        "text_offset": offsets,
    }
    return out, offset


def chat_logprobs(entries: list, tops: list | None) -> dict[str, Any]:
    """The chat ``logprobs`` object: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""

    def one(lp: float | None, text: str | None) -> dict[str, Any]:
        text = text or ""
        return {"token": text, "logprob": _safe(lp, -9999.0), "bytes": list(text.encode())}

    content = []
    for j, (lp, _tid, text) in enumerate(entries):
        alts = (tops[j] if tops is not None and j < len(tops) else None) or []
        content.append({**one(lp, text), "top_logprobs": [one(a[0], a[2]) for a in alts]})
    return {"content": content}


def _envelope(call: OpenAICall, obj: str, choices: list[dict], **extra: Any) -> dict[str, Any]:
    return {
        "id": call.id,
        "object": obj,
        "created": call.created,
        "model": call.model,
        "choices": choices,
        **extra,
    }


def build_response(call: OpenAICall, item: dict | list[dict]) -> dict[str, Any]:
    """The non-stream response for a native non-stream item."""
    results = as_list(item)
    echo = bool(call.echo_texts)
    choices = []
    for i, r in enumerate(results):
        meta = r["meta_info"]
        reason, matched = finish_reason(meta)
        choice: dict[str, Any] = {"index": i}
        lp = None
        if call.kind == "completion":
            choice["text"] = (call.echo_texts[i // call.n] if echo else "") + r["text"]
            if call.logprobs is not None:
                lp = completion_logprobs(*_entries(meta, echo), 0)[0]
        else:
            text, reasoning = r["text"], None
            if call.reasoning is not None:
                reasoning, text = call.reasoning.split(text, call.reasoning_inside)
            choice["message"] = {"role": "assistant", "content": text}
            if call.tool_format is not None:
                parsed = call.tool_format.parse(text)
                calls = list(parsed.calls)[: None if call.tools.parallel else 1]
                if calls:
                    choice["message"] = _tool_message(call, parsed.content, calls)
                    reason = _tool_finish(call, reason)
            if call.reasoning is not None:
                choice["message"]["reasoning_content"] = reasoning or None
            if call.logprobs is not None:
                lp = chat_logprobs(*_entries(meta, False))
        choice.update(logprobs=lp, finish_reason=reason, matched_stop=matched)
        if "constraint" in meta:  # how the response_format / json_schema was enforced
            choice["constraint"] = meta["constraint"]
        choices.append(choice)
    metas = [r["meta_info"] for r in results]
    return _envelope(call, call.object_name, choices, usage=usage(call, metas))


def _tool_message(call: OpenAICall, content: str | None, calls: list[ToolCall]) -> dict[str, Any]:
    """The assistant message of an output that holds calls (legacy requests: ``function_call``,
    the first call)."""
    if call.tools.legacy:
        fn = calls[0].as_openai()["function"]
        return {"role": "assistant", "content": content, "function_call": fn}
    return {"role": "assistant", "content": content, "tool_calls": [c.as_openai() for c in calls]}


def _tool_finish(call: OpenAICall, reason: str | None) -> str | None:
    """``finish_reason`` of a choice that made calls: the model stopped to call (``length`` is
    kept: a call cut short is still reported as cut)."""
    if reason != "stop":
        return reason
    return "function_call" if call.tools.legacy else "tool_calls"


@dataclass
class _ChoiceState:
    sent: int = 0  # characters of the cumulative text already sent
    logprobs_sent: int = 0  # output logprob entries already sent
    offset: int = 0  # completions: text_offset of the next token
    started: bool = False
    done: bool = False
    meta: dict[str, Any] | None = None
    tools: ToolStream | None = None  # chat with tools: splits the text into content and calls
    reasoning: ReasoningStream | None = None  # --reasoning-parser: thinking apart from content
    calls_out: int = 0  # tool calls sent (their stream indices are 0..calls_out-1)


class StreamState:
    """Turns the backend's cumulative chunks into OpenAI stream chunks (deltas per choice).

    Chat streams open every choice with a ``{"role": "assistant"}`` delta (:meth:`start`); the
    last chunk of a choice carries its ``finish_reason``. :meth:`feed` raises
    :class:`RequestAbortedError` when a choice was aborted.
    """

    def __init__(self, call: OpenAICall) -> None:
        self.call = call
        self.choices = [_ChoiceState() for _ in range(call.n * call.num_prompts)]
        for c in self.choices:
            if call.tool_format is not None:
                c.tools = ToolStream(call.tool_format)
            if call.reasoning is not None:
                c.reasoning = ReasoningStream(call.reasoning, call.reasoning_inside)
        self.obj = "text_completion" if call.kind == "completion" else "chat.completion.chunk"

    @property
    def all_done(self) -> bool:
        return all(c.done for c in self.choices)

    def _chunk(self, choices: list[dict]) -> dict[str, Any]:
        extra = {"usage": None} if self.call.include_usage else {}
        return _envelope(self.call, self.obj, choices, **extra)

    def start(self) -> list[dict[str, Any]]:
        if self.call.kind == "completion":
            return []
        role = {"delta": {"role": "assistant", "content": ""}, "logprobs": None}
        return [
            self._chunk([{"index": i, **role, "finish_reason": None}])
            for i in range(len(self.choices))
        ]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """One backend chunk (cumulative ``text`` for choice ``chunk.get("index", 0)``)."""
        i = chunk.get("index", 0)
        st = self.choices[i]
        if st.done:
            return []
        meta = chunk["meta_info"]
        reason, matched = finish_reason(meta)
        st.meta = meta
        text = chunk["text"]
        thought = ""  # reasoning_content delta
        if st.reasoning is not None:  # from here on ``text`` is the content
            thought, text = st.reasoning.feed(text, final=reason is not None)
        # NOTE: the backend's cumulative text only grows (stop strings are held back until
        # trimmed); if it ever shrank, nothing already sent could be taken back anyway.
        delta = text[st.sent :]
        st.sent = max(st.sent, len(text))
        completion = self.call.kind == "completion"
        first_echo = completion and bool(self.call.echo_texts) and not st.started
        lp = None
        if self.call.logprobs is not None:
            entries, tops = _entries(meta, first_echo, st.logprobs_sent)
            st.logprobs_sent = len(meta.get("output_token_logprobs") or [])
            if entries and completion:
                lp, st.offset = completion_logprobs(entries, tops, st.offset)
            elif entries:
                lp = chat_logprobs(entries, tops)
        st.started = True
        st.done = reason is not None
        prefix = self.call.echo_texts[i // self.call.n] if first_echo else ""
        calls: list[ToolCall] = []
        if st.tools is not None:  # content until a call starts; calls when they close
            ev = st.tools.feed(text, final=st.done)
            delta, calls = ev.content, self._allowed_calls(st, ev.calls)
            if st.calls_out + len(calls) and st.done:
                reason = _tool_finish(self.call, reason)
        if not (delta or prefix or lp or st.done or calls or thought):
            return []
        if completion:
            choice: dict[str, Any] = {"index": i, "text": prefix + delta}
        else:
            choice = {"index": i, "delta": {"content": delta} if delta else {}}
            if thought:
                choice["delta"]["reasoning_content"] = thought
        choice.update(logprobs=lp, finish_reason=reason, matched_stop=matched)
        if st.done and "constraint" in meta:
            choice["constraint"] = meta["constraint"]
        if not calls:
            return [self._chunk([choice])]
        # content first, then the calls, then the finish
        out = []
        if delta or lp or thought:
            out.append(self._chunk([{**choice, "finish_reason": None, "matched_stop": None}]))
        out += [self._chunk([c]) for c in self._call_deltas(i, st, calls)]
        if st.done:
            out.append(self._chunk([{**choice, "delta": {}, "logprobs": None}]))
        return out

    def _allowed_calls(self, st: _ChoiceState, calls: list[ToolCall]) -> list[ToolCall]:
        """With ``parallel_tool_calls: false`` only the first call of a choice is sent."""
        if self.call.tools.parallel:
            return calls
        return calls[: max(0, 1 - st.calls_out)]

    def _call_deltas(self, i: int, st: _ChoiceState, calls: list[ToolCall]) -> list[dict]:
        """Per call two choices: id, type and name (arguments empty), then the arguments."""
        out = []
        first = st.calls_out
        st.calls_out += len(calls)
        for k, c in enumerate(calls):
            if self.call.tools.legacy:
                head = {"function_call": {"name": c.name, "arguments": ""}}
                body = {"function_call": {"arguments": c.arguments}}
            else:
                fn_head = {"name": c.name, "arguments": ""}
                head = {"tool_calls": [{"index": first + k, "id": c.id, "type": "function",
                                        "function": fn_head}]}  # fmt: skip
                body = {
                    "tool_calls": [{"index": first + k, "function": {"arguments": c.arguments}}]
                }
            for delta in (head, body):
                out.append({"index": i, "delta": delta, "logprobs": None, "finish_reason": None})
        return out

    def usage_chunk(self) -> dict[str, Any]:
        """The final ``stream_options.include_usage`` chunk (no choices)."""
        metas = [c.meta for c in self.choices]
        return _envelope(self.call, self.obj, [], usage=usage(self.call, metas))
