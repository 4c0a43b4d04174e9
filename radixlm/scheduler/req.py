"""``Req``: the scheduler's state of one generation request.

Token bookkeeping: ``fill_ids = origin_input_ids + output_ids``. ``kv_len`` tokens of
``fill_ids`` have KV in the pool (row ``req_pool_idx``); while decoding,
``kv_len == len(fill_ids) - 1`` (the newest token's KV is computed by the next step).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from radixlm.constrained.base import GrammarSpec
from radixlm.engine.sampler import SamplingRow
from radixlm.engine.transfer import to_device
from radixlm.errors import RequestError
from radixlm.sampling_params import SamplingParams
from radixlm.scheduler.io import TokenizedRequest


@dataclass
class FinishReason:
    type: str  # "stop" | "length" | "abort"
    matched: int | str | None = None
    length: int | None = None
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.type == "stop":
            out["matched"] = self.matched
        elif self.type == "length":
            out["length"] = self.length
        elif self.type == "abort":
            out["message"] = self.message
        return out


@dataclass(eq=False)
class Req:
    rid: str
    origin_input_ids: list[int]
    sampling: SamplingParams
    max_new_tokens: int  # sampling.max_new_tokens capped by the context length
    stop_ids: tuple[int, ...]  # EOS ids (unless ignore_eos) + stop_token_ids
    stream: bool = False
    return_logprob: bool = False
    logprob_start_len: int = -1  # -1: no prompt logprobs
    top_logprobs_num: int = 0
    seed_offset: int = 0
    cache_namespace: tuple[str | None, ...] | None = None  # (tenant, extra_key, cache_salt)
    arrival: float = field(default_factory=time.monotonic)
    waiting_passes: int = 0  # scheduling passes spent waiting since (re)queued (aging)

    output_ids: list[int] = field(default_factory=list)
    finished_reason: FinishReason | None = None
    to_abort: str | None = None  # abort message, applied at the next step

    # Memory (see module docstring and mem/cache.py).
    req_pool_idx: int | None = None
    kv_len: int = 0
    cache_protected_len: int = 0
    last_node: Any = None
    cached_tokens: int = 0  # prompt tokens served from the prefix cache (first admission)
    admitted_once: bool = False
    queue_time: float | None = None  # arrival → first admission, seconds
    num_retractions: int = 0

    # This round's extend (set by the scheduler when admitting).
    is_chunked: bool = False  # True while the extend round does not reach the end of fill_ids
    # (batch, row) of the launched batch that is sampling this request's next token, until the
    # scheduler processes that batch's result (overlap scheduling). While set, the token's
    # value is unknown: ``kv_len == fill_len`` instead of ``fill_len - 1``.
    pending: tuple[Any, int] | None = None

    # Logprobs. Input entries: one per prompt token from logprob_start_len (first is None).
    input_logprobs_done: bool = False
    input_token_logprobs: list[float | None] = field(default_factory=list)
    input_top_logprobs: list[list[tuple[float, int]] | None] = field(default_factory=list)
    output_token_logprobs: list[float] = field(default_factory=list)
    output_top_logprobs: list[list[tuple[float, int]]] = field(default_factory=list)

    # Penalty state, created lazily when the request uses penalties.
    output_counts: torch.Tensor | None = None
    seen: torch.Tensor | None = None

    # Streaming cursor: how much has been reported already.
    sent_output_len: int = 0
    sent_input_logprobs: bool = False
    sent_any: bool = False  # the first output (with DetokInit) has been built
    decode_steps_since_sent: int = 0

    # Stop-string detection state (incremental detokenizer), created lazily.
    stop_detok: Any = None

    # Constrained decoding (scheduler/grammar.py): the spec, its compile job while queued, and
    # this request's matcher over the shared compiled grammar.
    grammar_spec: Any = None
    grammar_job: Any = None
    grammar: Any = None
    compiled_grammar: Any = None
    constraint_report: dict[str, Any] | None = None  # set when a constrained request finishes
    reasoning_markers: tuple[int, int] | None = None  # the constraint starts after </think>
    error_status: int | None = None  # set when the request fails for a client error (400)

    @classmethod
    def from_tokenized(
        cls, tr: TokenizedRequest, max_req_len: int, eos_ids: tuple[int, ...]
    ) -> Req:
        """Check the runtime's limits (token ids were validated by the front end,
        ``entrypoints/request.py``); ``max_new_tokens`` is capped by the context."""
        sp = tr.sampling
        prompt_len = len(tr.input_ids)
        if prompt_len == 0:
            raise RequestError("the prompt is empty; send at least one token")
        if prompt_len >= max_req_len:
            raise RequestError(
                f"the prompt has {prompt_len} tokens but this server accepts at most "
                f"{max_req_len - 1} (context length {max_req_len}); shorten the prompt"
            )
        stop_ids = tuple(sp.stop_token_ids) + (() if sp.ignore_eos else eos_ids)
        spec = GrammarSpec.from_request(sp.regex, sp.json_schema, sp.ebnf)
        return cls(
            rid=tr.rid,
            origin_input_ids=list(tr.input_ids),
            sampling=sp,
            max_new_tokens=min(sp.max_new_tokens, max_req_len - prompt_len),
            stop_ids=tuple(dict.fromkeys(stop_ids)),
            stream=tr.stream,
            return_logprob=tr.return_logprob,
            logprob_start_len=tr.logprob_start_len if tr.return_logprob else -1,
            top_logprobs_num=tr.top_logprobs_num if tr.return_logprob else 0,
            seed_offset=tr.seed_offset,
            grammar_spec=spec,
            reasoning_markers=tr.reasoning_markers if spec is not None else None,
            cache_namespace=(
                (tr.tenant, tr.extra_key, tr.cache_salt)
                if tr.tenant is not None or tr.extra_key is not None or tr.cache_salt is not None
                else None
            ),
        )

    @property
    def fill_ids(self) -> list[int]:
        return self.origin_input_ids + self.output_ids

    @property
    def fill_len(self) -> int:
        """``len(fill_ids)`` without building the list."""
        return len(self.origin_input_ids) + len(self.output_ids)

    @property
    def prompt_len(self) -> int:
        return len(self.origin_input_ids)

    @property
    def finished(self) -> bool:
        return self.finished_reason is not None

    @property
    def wants_input_logprobs(self) -> bool:
        return self.return_logprob and self.logprob_start_len >= 0 and not self.input_logprobs_done

    def max_cacheable_prefix(self) -> int:
        """How many leading fill tokens may come from the cache this round.

        At least one token is always recomputed (its logits feed the sampler); prompt positions
        whose logprobs are still owed must be recomputed as well.
        """
        limit = self.fill_len - 1
        if self.wants_input_logprobs:
            limit = min(limit, max(self.logprob_start_len, 1) - 1)
        return max(limit, 0)

    def remaining_new_tokens(self) -> int:
        return self.max_new_tokens - len(self.output_ids)

    @property
    def num_outputs_launched(self) -> int:
        """Output tokens sampled or being sampled (the pending one counts)."""
        return len(self.output_ids) + (self.pending is not None)

    def init_penalty_state(self, vocab_size: int, device: torch.device) -> None:
        if self.output_counts is not None or not self.sampling.has_penalties:
            return
        self.output_counts = torch.zeros(vocab_size, dtype=torch.int32, device=device)
        self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        ids = to_device(self.fill_ids, torch.int64, device)
        self.seen[ids] = True
        if self.output_ids:
            out = to_device(self.output_ids, torch.int64, device)
            self.output_counts.index_add_(0, out, torch.ones_like(out, dtype=torch.int32))

    def sampling_row(self, vocab_size: int, device: torch.device) -> SamplingRow:
        """This request's row of the next sampling call (creates penalty state on first use).

        Built when the batch is launched: a token still being sampled counts as an output.
        """
        self.init_penalty_state(vocab_size, device)
        return SamplingRow(
            params=self.sampling,
            num_output=len(self.output_ids) + (self.pending is not None),
            stop_ids=self.stop_ids,
            output_counts=self.output_counts,
            seen=self.seen,
            seed_offset=self.seed_offset,
        )

    def append_token(self, token: int) -> None:
        """Record a sampled token (penalty counts were updated by the executor)."""
        self.output_ids.append(token)

    def reset_memory(self) -> None:
        """Forget all memory state (the caller has released it); outputs are kept, so the
        request is re-prefilled with prompt + outputs when admitted again."""
        self.req_pool_idx = None
        self.kv_len = 0
        self.cache_protected_len = 0
        self.last_node = None
        self.is_chunked = False
