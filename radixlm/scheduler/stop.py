"""Finish conditions: stop ids, stop strings (on the text produced so far), length.

Each request with stop strings keeps an :class:`IncrementalDetokenizer`; after every token only
the newly completed text (plus the longest stop string's length of left context) is searched,
so the cost per step does not grow with the output.
"""

from __future__ import annotations

from typing import Any

from radixlm.scheduler.req import FinishReason, Req
from radixlm.tokenizer.detokenizer import IncrementalDetokenizer


class StopChecker:
    def __init__(self, tokenizer: Any | None) -> None:
        self.tokenizer = tokenizer

    def check(self, req: Req, token: int) -> str | None:
        """Feed ``token``; return the stop string that now occurs in the output, if any."""
        stops = req.sampling.stop
        if not stops or self.tokenizer is None:
            return None
        if req.stop_detok is None:
            req.stop_detok = IncrementalDetokenizer(
                self.tokenizer,
                req.origin_input_ids,
                skip_special_tokens=req.sampling.skip_special_tokens,
                spaces_between_special_tokens=req.sampling.spaces_between_special_tokens,
            )
            new = req.stop_detok.add(req.output_ids)  # catch up (also after retraction)
        else:
            new = req.stop_detok.add([token])
        if not new:
            return None
        text = req.stop_detok.text
        best: tuple[int, str] | None = None
        for stop in stops:
            start = max(0, len(text) - len(new) - len(stop) + 1)
            pos = text.find(stop, start)
            if pos != -1 and (best is None or pos < best[0]):
                best = (pos, stop)
        return None if best is None else best[1]


def check_finished(req: Req, stop_checker: StopChecker) -> None:
    """Set ``req.finished_reason`` if the token just appended ends the request.

    Order: stop token ids / EOS, then stop strings, then length. While fewer than
    ``min_new_tokens`` are out, stops are ignored (the sampler masks stop ids meanwhile).
    """
    token = req.output_ids[-1]
    num_out = len(req.output_ids)
    if num_out >= req.sampling.min_new_tokens:
        if token in req.stop_ids:
            req.finished_reason = FinishReason("stop", matched=token)
            return
        matched = stop_checker.check(req, token)
        if matched is not None:
            req.finished_reason = FinishReason("stop", matched=matched)
            return
    elif req.sampling.stop:
        stop_checker.check(req, token)  # keep its decoded text in sync
    if num_out >= req.max_new_tokens:
        req.finished_reason = FinishReason("length", length=num_out)
