"""Messages between the front end (Engine / tokenizer manager) and the scheduler.

Plain picklable dataclasses: the same objects cross a ZMQ socket once the scheduler runs in
its own process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from radixlm.sampling_params import SamplingParams

# (logprob, token_id) pairs; text is attached by the front end when asked for.
TopLogprobs = list[tuple[float, int]]


@dataclass
class TokenizedRequest:
    rid: str
    input_ids: list[int]
    sampling: SamplingParams
    stream: bool = False
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    seed_offset: int = 0  # i-th of n parallel samples draws with sampling_seed + i
    # Prefix-cache namespace: requests share cached KV only when both fields are equal.
    cache_salt: str | None = None
    # The API-key tenant (server ``--api-key-file``): a prefix-cache namespace of its own.
    tenant: str | None = None
    extra_key: str | None = None
    # ``require_reasoning``: (start, end) token ids of the thinking markers; the request's
    # constraint applies only after the reasoning (constrained/reasoning_gate.py).
    reasoning_markers: tuple[int, int] | None = None


@dataclass
class AbortRequest:
    rid: str
    message: str = "aborted by request"


@dataclass
class AbortRequests:
    """Abort several requests in one scheduler step (e.g. the ``n`` samples of a call whose
    client left): they leave the queue in one pass."""

    rids: list[str]
    message: str = "aborted by request"


@dataclass
class DetokInit:
    """What a detokenizer in another process needs to render a request's output text."""

    prompt_tail: list[int]  # the last prompt tokens: left context for the first output token
    sampling: SamplingParams  # stop strings, no_stop_trim, special-token options


@dataclass
class ReqOutput:
    """What happened to one request since its previous ReqOutput.

    ``new_token_ids`` and the ``output_*`` logprob lists are deltas. Input logprobs are sent
    once, in the first output after the prompt has been processed.
    """

    rid: str
    new_token_ids: list[int]
    finished_reason: dict[str, Any] | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    input_token_logprobs: list[float | None] | None = None
    input_top_logprobs: list[TopLogprobs | None] | None = None
    output_token_logprobs: list[float] = field(default_factory=list)
    output_top_logprobs: list[TopLogprobs] = field(default_factory=list)
    num_retractions: int = 0
    queue_time: float | None = None  # seconds from arrival to first admission (first output)
    detok_init: DetokInit | None = None  # in a request's first output only
    error_status: int | None = None  # the request failed for a client error (e.g. 400)
    # A constrained request's last output: how its constraint was enforced and whether the
    # output satisfies it (``scheduler/grammar.py``, ``GrammarManager.report``).
    constraint: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.finished_reason is not None
