"""Backend selection: ``--grammar-backend`` name → a ``GrammarBackend`` (backends imported lazily).

- ``outlines``: outlines-core. Compiles a spec to a regex and a token-level DFA up front, so a
  mask is a cached row copy (a few µs); compiling can take seconds, and specs beyond the regex
  conversion or its size guards are refused.
- ``llguidance``: llguidance (optional: ``pip install 'radixlm[grammar]'``). Compiles in
  milliseconds, computes each mask on demand (tens of µs), takes more of JSON Schema, and
  ``ebnf`` (Lark / GBNF) grammars.
- ``auto``: ``AutoBackend`` — outlines-core first; a spec it refuses as unsupported or too large
  (``UnsupportedGrammarError``), or that it does not compile within ``outlines_budget_s``, is
  compiled by llguidance; ``ebnf`` and ``json_object`` (JSON mode) go to llguidance directly.
  Without llguidance installed, ``auto`` is ``outlines``.

Invariant: every backend returned here has the same ``vocab_size``, bitmask layout and EOS ids
(they share one ``TokenVocabulary``), so matchers of different backends can share a batch mask.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from radixlm.constrained.base import (
    CompiledGrammar,
    GrammarBackend,
    GrammarSpec,
    UnsupportedGrammarError,
)
from radixlm.constrained.vocabulary import build_token_vocabulary
from radixlm.errors import ConfigError, GrammarError

logger = logging.getLogger(__name__)

BACKENDS = ("outlines", "llguidance", "auto")
# ``auto`` gives outlines-core this long before compiling with llguidance instead.
AUTO_OUTLINES_BUDGET_S = 1.0


def create_backend(
    name: str,
    tokenizer: Any,
    vocab_size: int,
    eos_token_ids: Sequence[int],
    *,
    whitespace_pattern: str | None = None,
    unenforced: str = "ignore",
    max_spec_chars: int = 100_000,
    outlines_budget_s: float = AUTO_OUTLINES_BUDGET_S,
) -> GrammarBackend:
    """The backend called ``name`` over ``tokenizer``; ``ConfigError`` for an unknown name or
    ``llguidance`` without the package installed."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown grammar backend {name!r}; expected one of {list(BACKENDS)}")
    vocab = build_token_vocabulary(tokenizer, vocab_size, eos_token_ids)
    options = {
        "whitespace_pattern": whitespace_pattern,
        "unenforced": unenforced,
        "max_spec_chars": max_spec_chars,
        "tokenizer": tokenizer,
    }
    from radixlm.constrained import llguidance_backend

    if name == "llguidance":
        return llguidance_backend.LLGuidanceBackend.from_vocabulary(vocab, vocab_size, **options)
    from radixlm.constrained.outlines_backend import OutlinesBackend

    outlines = OutlinesBackend.from_vocabulary(vocab, vocab_size, **options)
    if name == "outlines":
        return outlines
    if not llguidance_backend.llguidance_available():
        logger.warning(
            "--grammar-backend auto: llguidance is not installed, so specs outlines-core cannot "
            "compile are refused (pip install 'radixlm[grammar]')"
        )
        return outlines
    fallback = llguidance_backend.LLGuidanceBackend.from_vocabulary(vocab, vocab_size, **options)
    return AutoBackend(outlines, fallback, outlines_budget_s)


class AutoBackend(GrammarBackend):
    """``primary`` (fast masks) first, ``fallback`` (compiles anything, fast) for the rest.

    A primary compile runs on this backend's own pool of ``max_workers`` threads so that it can
    be abandoned after ``budget_s``: it is not interrupted (outlines-core cannot be), its result
    is dropped, and it keeps its thread busy until it ends — so abandoned compiles occupy at
    most ``max_workers`` cores (default one), and specs queued behind them fall back to the
    fallback backend once their budget is spent (a queued compile is cancelled, never run).
    ``stats`` counts the outcomes (``primary``, ``unsupported``, ``over_budget``, ``failed``).
    """

    def __init__(
        self,
        primary: GrammarBackend,
        fallback: GrammarBackend,
        budget_s: float = AUTO_OUTLINES_BUDGET_S,
        max_workers: int = 1,
    ) -> None:
        if primary.vocab_size != fallback.vocab_size:
            raise ConfigError("auto: both grammar backends must have the same vocab_size")
        self.primary = primary
        self.fallback = fallback
        self.budget_s = budget_s
        self.vocab_size = primary.vocab_size
        self.kinds = tuple(dict.fromkeys(primary.kinds + fallback.kinds))
        # JSON mode: outlines-core needs seconds for its bounded-depth regex (2.6 s for a
        # 512-token vocabulary, 3.5 s for GPT-2's), llguidance milliseconds.
        self.fallback_first = ("json_object",)
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="grammar-auto")
        self._running: set[Future] = set()
        self._lock = threading.Lock()
        self.stats = {"primary": 0, "unsupported": 0, "over_budget": 0, "failed": 0}

    def compile(self, spec: GrammarSpec) -> CompiledGrammar:
        if spec.kind in self.fallback_first or not self.primary.supports(spec.kind):
            return self.fallback.compile(spec)
        future = self._pool.submit(self.primary.compile, spec)
        with self._lock:
            self._running.add(future)
        future.add_done_callback(self._finished)
        try:
            compiled = future.result(timeout=self.budget_s)
        except UnsupportedGrammarError as e:
            outcome, reason = "unsupported", str(e)
        except FutureTimeout:
            future.cancel()  # still queued: never starts; running: finishes in the background
            outcome, reason = "over_budget", f"not compiled within {self.budget_s:g} s"
        except GrammarError:
            raise  # an invalid spec: the fallback would refuse it too
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # a primary backend bug or a Rust panic: the fallback tries
            logger.exception("auto: the primary grammar backend failed on a %s spec", spec.kind)
            outcome, reason = "failed", f"{type(e).__name__}: {e}"
        else:
            self._count("primary")
            return compiled
        self._count(outcome)
        logger.info("auto: %s spec goes to the fallback backend (%s)", spec.kind, reason[:200])
        return self.fallback.compile(spec)

    def _finished(self, future: Future) -> None:
        with self._lock:
            self._running.discard(future)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no primary compile (an abandoned one included) is queued or running;
        False if some still is after ``timeout_s`` (benchmarks use it to measure cleanly)."""
        with self._lock:
            pending = list(self._running)
        return not wait(pending, timeout=timeout_s).not_done

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.stats[outcome] += 1

    def close(self) -> None:
        """Stop the primary's pool; compiles still running are not waited for."""
        self._pool.shutdown(wait=False, cancel_futures=True)
