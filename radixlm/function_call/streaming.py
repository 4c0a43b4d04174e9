"""Streaming tool calls: cumulative model text in, content deltas and finished calls out.

:class:`ToolStream` sends text as ``content`` until it can tell that a call starts: it holds
back any tail that could still become the format's trigger (and, for formats whose call is the
whole output, everything until the first non-space character says otherwise). From the trigger
on, text is held; each call is sent as soon as the format sees it closed
(:meth:`ToolCallFormat.closed_end`) and the rest when the output ends, parsed by the same
:meth:`ToolCallFormat.parse` as a non-streamed response. Invariant: the concatenation of the
content deltas plus the calls equals what :meth:`parse` returns for the final text; text that
turns out not to hold well-formed calls is sent as content at the end, nothing is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from radixlm.function_call.formats import ToolCall, ToolCallFormat


@dataclass
class StreamEvents:
    content: str = ""
    calls: list[ToolCall] = field(default_factory=list)


class ToolStream:
    def __init__(self, fmt: ToolCallFormat) -> None:
        self.fmt = fmt
        self._sent = 0  # characters of the text sent as content
        self._calls_sent = 0
        self._in_call = False
        self._closed_at = 0  # end of the last complete call already sent
        self._whole_output = fmt.whole_output  # undecided until the first character

    @property
    def calls_sent(self) -> int:
        return self._calls_sent

    def feed(self, text: str, final: bool) -> StreamEvents:
        """``text``: the cumulative output so far; ``final``: it is complete."""
        ev = StreamEvents()
        if final:
            parsed = self.fmt.parse(text)
            if not parsed.calls:  # no calls after all: everything unsent is content
                ev.content, self._sent = text[self._sent :], len(text)
                return ev
            sent = text[: self._sent].strip()
            content = parsed.content or ""
            if content.startswith(sent):  # what is left of the text around the calls
                ev.content = content[len(sent) :]
            ev.calls = list(parsed.calls[self._calls_sent :])
            self._calls_sent = len(parsed.calls)
            return ev
        if not self._in_call:
            start = self._call_start(text)
            if start is None:
                safe = self._safe_end(text)
                ev.content, self._sent = text[self._sent : safe], max(self._sent, safe)
                return ev
            ev.content = text[self._sent : start]
            self._sent = start
            self._in_call = True
        end = self.fmt.closed_end(text)
        if end > self._closed_at:  # a call closed since the last feed: parse once more
            self._closed_at = end
            parsed = self.fmt.parse(text[:end])
            ev.calls = list(parsed.calls[self._calls_sent :])
            self._calls_sent = max(self._calls_sent, len(parsed.calls))
        return ev

    def _call_start(self, text: str) -> int | None:
        if self._whole_output:
            body = text.lstrip()
            if not body:
                return None
            if body.startswith("{") or body.startswith(self.fmt.trigger):
                return 0
            if self.fmt.trigger.startswith(body):
                return None  # could still be the trigger
            self._whole_output = False  # plain text: this output holds no call
            return None
        i = text.find(self.fmt.trigger, self._sent)
        return None if i == -1 else i

    def _safe_end(self, text: str) -> int:
        """End of the text that can be sent: not a tail that could begin the trigger."""
        if self._whole_output:
            return self._sent  # undecided: hold everything
        trig = self.fmt.trigger
        for k in range(min(len(trig) - 1, len(text)), 0, -1):
            if trig.startswith(text[-k:]):
                return len(text) - k
        return len(text)
