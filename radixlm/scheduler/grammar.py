"""Constrained requests in the scheduler: compile off-thread, mask, advance, finish, jump.

- ``submit``: a request with ``regex`` / ``json_schema`` / ``ebnf`` waits in the grammar queue
  while its grammar compiles on the compiler's thread pool (identical specs compile once);
  ``poll`` releases it to the waiting queue, or fails it with the compile error (a 400).
- ``fill_mask``: right before a batch runs, one bitmask row per sampled request (all ones for
  unconstrained rows); the executor applies it to the logits.
- ``accept``: advance the request's matcher by its new token; a matcher that is complete with
  nothing but EOS allowed ends the request (``stop``).
- ``jump_forward``: after a token, the grammar's forced continuation is appended at once
  (``constrained/jump_forward.py``); the scheduler then re-extends the request.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from radixlm.config import EngineConfig
from radixlm.constrained.jump_forward import retokenize_with_forced
from radixlm.constrained.reasoning_gate import ReasoningGate
from radixlm.engine.transfer import pinned_to_device
from radixlm.errors import GrammarError, RadixLMError, RequestError
from radixlm.reasoning import prompt_phase
from radixlm.scheduler.batch import ScheduleBatch
from radixlm.scheduler.req import Req

logger = logging.getLogger(__name__)


class ConstraintBroken(RadixLMError):
    """A constrained request that cannot go on (see :meth:`GrammarManager.accept`)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.http_status = status


class GrammarManager:
    def __init__(
        self, config: EngineConfig, tokenizer: Any | None, vocab_size: int, eos_ids: tuple
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_ids = list(eos_ids)
        self.queue: list[Req] = []  # waiting for their grammar to compile
        self._backend = None
        self._compiler = None
        if config.grammar_backend == "xgrammar":  # fail at start-up, not at the first request
            from radixlm.constrained.xgrammar_backend import _xgrammar

            _xgrammar()

    # ---- compile -------------------------------------------------------------------------
    def _ensure_compiler(self) -> Any:
        if self._compiler is None:
            if self.config.grammar_backend == "none":
                raise RequestError(
                    "this server runs with --grammar-backend none; regex / json_schema / ebnf "
                    "constraints are disabled"
                )
            if self.tokenizer is None:
                raise RequestError("constrained decoding needs a tokenizer (skip_tokenizer_init)")
            from radixlm.constrained.backends import recipe_for
            from radixlm.constrained.compile_workers import CompileWorkerPool
            from radixlm.constrained.compiler import GrammarCompiler, worker_build, worker_init

            c = self.config
            recipe = recipe_for(
                c.grammar_backend,
                self.tokenizer,
                self.vocab_size,
                self.eos_ids,
                whitespace_pattern=c.constrained_json_whitespace_pattern,
                unenforced=c.json_schema_unenforced,
                max_spec_chars=c.grammar_max_spec_chars,
            )
            self._backend = recipe.build()
            pool = CompileWorkerPool(
                worker_init,
                recipe,
                worker_build,
                num_workers=c.grammar_compile_workers,
                timeout_s=c.grammar_compile_timeout,
                memory_limit_mb=c.grammar_compile_memory_mb or None,
            )
            self._compiler = GrammarCompiler(self._backend, pool)
        return self._compiler

    def check(self, req: Req) -> None:
        """Raise RequestError now if constrained requests cannot be served at all."""
        if req.grammar_spec is not None:
            self._ensure_compiler()
            kind = req.grammar_spec.kind
            if not self._backend.supports(kind):
                raise RequestError(
                    f"{kind} grammars are not supported by this server's grammar backend "
                    f"({self.config.grammar_backend}); start it with --grammar-backend "
                    "llguidance or auto, or express the constraint as a regex or a JSON schema"
                )

    def submit(self, req: Req) -> None:
        req.grammar_job = self._ensure_compiler().submit(req.grammar_spec)
        self.queue.append(req)

    def poll(self) -> tuple[list[Req], list[tuple[Req, GrammarError]]]:
        """Requests whose grammar is ready (matcher attached) and those whose compile failed."""
        ready, failed, still = [], [], []
        for req in self.queue:
            job = req.grammar_job
            if not job.ready():
                still.append(req)
                continue
            try:
                req.compiled_grammar = job.result()
                req.grammar = req.compiled_grammar.matcher()
                if req.reasoning_markers is not None:
                    start, end = req.reasoning_markers
                    phase = prompt_phase(req.origin_input_ids, start, end)
                    req.grammar = ReasoningGate(req.grammar, start, end, phase, req.stop_ids)
                ready.append(req)
            except GrammarError as e:
                failed.append((req, e))
            req.grammar_job = None
        self.queue = still
        return ready, failed

    def remove(self, req: Req) -> None:
        """An aborted request leaves the grammar queue; a compile nobody waits for any more is
        cancelled."""
        if req in self.queue:
            self.queue.remove(req)
            if req.grammar_job is not None:
                req.grammar_job.cancel()
                req.grammar_job = None

    def report(self, req: Req) -> None:
        """Set ``req.constraint_report`` for a finished constrained request: the backend that
        served it, the schema keywords it did not enforce, and whether the output satisfies
        the constraint (checked when the grammar completed it; None otherwise)."""
        compiled = req.compiled_grammar
        if compiled is None or req.constraint_report is not None:
            return
        valid: bool | None = None
        error: str | None = None
        reason = req.finished_reason.type if req.finished_reason else None
        if reason == "stop":
            ids = list(req.output_ids)
            if isinstance(req.grammar, ReasoningGate):  # only the answer is constrained
                ids = ids[req.grammar.content_start :]
            while ids and ids[-1] in req.stop_ids:
                ids.pop()
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            valid, error = compiled.check_output(text)
        elif reason is not None:
            error = f"not checked: the output is incomplete (finish reason {reason})"
        req.constraint_report = {
            "kind": compiled.spec.kind,
            "backend": compiled.backend_name,
            "valid": valid,
            "error": error,
            "unenforced": [u.to_json() for u in compiled.unenforced],
        }
        if valid is False:
            logger.warning(
                "constrained output of %s fails its %s: %s", req.rid, compiled.spec.kind, error
            )

    # ---- per step ------------------------------------------------------------------------
    def fill_mask(self, batch: ScheduleBatch, device: torch.device) -> None:
        """Set ``batch.vocab_mask`` if any sampled request of the batch is constrained."""
        reqs = batch.sample_reqs
        if not any(r.grammar is not None for r in reqs):
            batch.vocab_mask = None
            return
        mask = self._backend.allocate_mask(len(reqs))
        for row, req in enumerate(reqs):
            if req.grammar is not None and not req.finished:
                req.grammar.fill_mask(mask, row)
        batch.vocab_mask = pinned_to_device(mask, device)  # no host sync on CUDA

    def accept(self, req: Req, token: int) -> bool:
        """Advance by the request's new token; True if the grammar says the output is done.

        Raises :class:`ConstraintBroken` (the request fails; the server goes on) when the
        matcher is in an error state — it hit one of its own limits (llguidance's lexer or
        parser size) or found no continuation the vocabulary can spell: a 400 naming the
        reason — or when it refuses a token its own mask allowed, for no stated reason: a bug,
        a 500."""
        ok = req.grammar.advance(token)
        kind = req.grammar_spec.kind if req.grammar_spec is not None else "constraint"
        reason = req.grammar.error()
        if reason is not None:
            raise ConstraintBroken(
                f"the {kind} constraint cannot be followed past output token "
                f"{len(req.output_ids)}: {reason}; simplify it", 400
            )  # fmt: skip
        if not ok:
            if token not in req.stop_ids:  # only EOS gets here normally (stops are not masked)
                logger.error("grammar rejected sampled token %d of %s", token, req.rid)
                raise ConstraintBroken(f"the {kind} constraint failed internally", 500)
            return False
        return req.grammar.is_terminated()

    def plan_jump_forward(self, req: Req) -> tuple[list[int], Any] | None:
        """The request's output ids with the grammar's forced continuation appended, and a
        matcher advanced over them; None when there is none or it cannot apply cleanly.
        Mutates nothing: the caller frees the request's KV first, then applies it."""
        if self.config.disable_jump_forward or req.return_logprob:
            return None
        forced = req.grammar.forced_bytes()
        if len(forced) < 2:  # one byte is as cheap to sample as to jump
            return None
        new_output = retokenize_with_forced(
            self.tokenizer, req.origin_input_ids, req.output_ids, forced, req.sent_output_len
        )
        if new_output is None or not len(req.output_ids) < len(new_output) <= req.max_new_tokens:
            return None
        # The matcher has advanced over exactly ``output_ids``: keep their common prefix with
        # the re-tokenization and advance over the rest (no replay of the whole output).
        old = req.output_ids
        same = next((i for i, (a, b) in enumerate(zip(old, new_output)) if a != b), len(old))
        matcher = req.grammar.copy()
        matcher.rollback(len(old) - same)
        for tok in new_output[same:]:
            if not matcher.advance(tok):
                return None  # the re-tokenization is not accepted token by token: skip
        return new_output, matcher

    def apply_jump_forward(self, req: Req, new_output: list[int], matcher: Any) -> None:
        req.output_ids = new_output
        req.grammar = matcher
        req.stop_detok = None  # rebuilt from output_ids on the next check
        req.output_counts = req.seen = None  # penalty state is recomputed from fill_ids

    def close(self) -> None:
        if self._compiler is not None:
            self._compiler.close()
            self._backend.close()
