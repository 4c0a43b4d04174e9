"""Grammar backend on outlines-core: spec → regex → token-level ``Index`` → per-request matcher.

- ``OutlinesBackend`` owns the byte view of the vocabulary (``TokenVocabulary``), the
  outlines-core ``Vocabulary`` built from it, and one LRU cache of per-state masks shared by
  all compiled grammars (bounded in bytes).
- ``OutlinesGrammar`` (a ``CompiledGrammar``) is an immutable ``Index``; ``matcher()`` is cheap.
- ``OutlinesMatcher`` is an ``int`` state plus the history of earlier states (for rollback).

Invariants: a mask row has bits only for ids below ``min(len(tokenizer), vocab_size)`` (never
for special or padding ids) plus, exactly in final states, every EOS id. Accepting an EOS id
moves a matcher to ``DONE`` (terminated; only EOS allowed).

NOTE (outlines-core 0.2.14 bug): ``Index`` drops a transition whose end state sits one byte
after a complete match but is not itself a complete match, so after ``ab`` the regex ``(ab)+``
allows no ``a``, and after ``1`` the float regex allows no ``.`` token (upstream commit 2ba0b24,
"fix: avoid generating incomplete automata", released after 0.2.14). The workaround: compile
``(?:R)`` followed by a sentinel character that no output contains, add a sentinel token (an id
past the vocabulary) to the outlines vocabulary, and call a state final when the sentinel token
may follow it and complete the match. No prefix of real output is then a complete match, so no
transition is dropped. Tokens containing the byte 0xF4 are left out of the outlines vocabulary so
that real output can never spell the sentinel: grammars cannot produce the private-use code
points U+100000..U+10FFFF (which the sentinel's lead byte 0xF4 starts).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from outlines_core import Index, Vocabulary

from radixlm.constrained.base import (
    KINDS,
    CompiledGrammar,
    GrammarArtifact,
    GrammarBackend,
    GrammarMatcher,
    GrammarSpec,
    UnsupportedGrammarError,
)
from radixlm.constrained.outlines_schema import OUTLINES_SUPPORT
from radixlm.constrained.specs import spec_to_regex
from radixlm.errors import GrammarError

DONE = -1  # matcher state after an EOS was accepted
SENTINEL = chr(0x10FFFF)  # ends every compiled regex; real output never contains it (see NOTE)
_SENTINEL_LEAD = SENTINEL.encode()[0]  # 0xF4: leads only U+100000..U+10FFFF (private use)
MAX_FORCED_BYTES = 4096  # forced_bytes() stops here (a forced run is a literal of the grammar)


@dataclass(slots=True)
class _StateInfo:
    mask: torch.Tensor  # [words] int32, the mask row of this state
    final: bool
    terminated: bool
    lcp: bytes  # longest common prefix of the allowed tokens' bytes


class _MaskCache:
    """LRU of ``_StateInfo`` keyed by (grammar key, state), bounded in bytes of mask rows."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._bytes = 0
        self._entries: OrderedDict[tuple[int, int], _StateInfo] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> _StateInfo | None:
        with self._lock:
            info = self._entries.get(key)
            if info is not None:
                self._entries.move_to_end(key)
            return info

    def put(self, key: tuple[int, int], info: _StateInfo) -> None:
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = info
            self._bytes += info.mask.nbytes
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.mask.nbytes

    def __len__(self) -> int:
        return len(self._entries)


class OutlinesBackend(GrammarBackend):
    """Compiles ``GrammarSpec`` s over one tokenizer's vocabulary with outlines-core.

    ``vocab_size`` is the number of logit rows (may exceed ``len(tokenizer)``);
    ``eos_token_ids`` (default: the tokenizer's EOS) are allowed exactly in final states.
    ``max_transitions`` bounds the estimated FSM size (free-text positions × vocabulary);
    ``mask_cache_bytes`` bounds the per-state mask rows kept for all grammars together.
    """

    name = "outlines"
    kinds = tuple(k for k in KINDS if k != "ebnf")
    json_support = OUTLINES_SUPPORT

    def _setup(
        self, tokenizer: Any, *, max_transitions: int = 50_000_000, mask_cache_bytes: int = 64 << 20
    ) -> None:
        vocab = self.vocab
        self.sentinel_id = max(vocab.size, self.vocab_size)
        groups: dict[bytes, list[int]] = {}
        for piece, ids in vocab.ids_by_bytes.items():
            real = [i for i in ids if i < self.limit]
            if real and _SENTINEL_LEAD not in piece:  # real tokens can never spell the sentinel
                groups[piece] = real
        num_real = sum(len(ids) for ids in groups.values())
        groups.setdefault(SENTINEL.encode(), []).append(self.sentinel_id)
        # NOTE: outlines' own EOS is a further id past the vocabulary: it is only allowed in the
        # states after the sentinel, which no matcher ever enters; real EOS ids are ours.
        self._outlines_vocab = Vocabulary(self.sentinel_id + 1, groups)
        # Each free-text position of a grammar costs about one FSM transition per token.
        max_wide = max(1, max_transitions // max(1, num_real))
        self.limits = dataclasses.replace(self.limits, max_wide_positions=max_wide)
        self.mask_cache = _MaskCache(mask_cache_bytes)
        self._keys = itertools.count()
        self.done_info = _StateInfo(self.eos_mask, final=True, terminated=True, lcp=b"")
        # First byte of each id (-1: never allowed), for ``OutlinesGrammar._common_prefix``.
        self.first_bytes = np.array(
            [piece[0] if piece else -1 for piece in vocab.token_bytes], dtype=np.int16
        )

    def build(self, spec: GrammarSpec, policy: str | None = None) -> GrammarArtifact:
        """The artifact's payload is ``(regex, Index)``; an ``Index`` pickles (to come back
        from a compile worker)."""
        regex, unenforced = spec_to_regex(spec, self.limits, self.policy_for(spec, policy))
        try:
            index = Index(f"(?:{regex}){SENTINEL}", self._outlines_vocab)
        except ValueError as e:
            if "incompatible" in str(e):
                raise GrammarError(
                    f"the {spec.kind} constraint needs characters this model's tokenizer cannot "
                    f"produce; change the constraint (regex: {regex[:200]!r})"
                ) from e
            raise UnsupportedGrammarError(
                f"the {spec.kind} constraint is not supported by the outlines grammar engine "
                f"({e}); lookarounds, backreferences and Unicode word boundaries are not "
                f"supported (regex: {regex[:200]!r})"
            ) from e
        return GrammarArtifact(self.name, spec, (regex, index), unenforced)

    def load(self, artifact: GrammarArtifact) -> OutlinesGrammar:
        regex, index = artifact.payload
        return OutlinesGrammar(self, artifact, regex, index, next(self._keys))


class OutlinesGrammar(CompiledGrammar):
    """An immutable token-level FSM for one spec; shared by every request with that spec."""

    def __init__(
        self,
        backend: OutlinesBackend,
        artifact: GrammarArtifact,
        regex: str,
        index: Index,
        key: int,
    ) -> None:
        self.backend = backend
        self.spec = artifact.spec
        self.backend_name = artifact.backend
        self.unenforced = artifact.unenforced
        self.regex = regex
        self.index = index
        self.key = key
        self.initial_state: int = index.get_initial_state()

    def matcher(self) -> OutlinesMatcher:
        return OutlinesMatcher(self, self.initial_state, array("q"))

    # --- per-state facts, shared by all matchers of this grammar ---------------------------

    def is_final(self, state: int) -> bool:
        if state == DONE:
            return True
        # Final iff the sentinel may follow *and end the match* (R itself may allow U+10FFFF).
        after = self.index.get_next_state(state, self.backend.sentinel_id)
        return after is not None and self.index.is_final_state(after)

    def allowed_ids(self, state: int) -> np.ndarray:
        """Real token ids allowed in ``state`` (no EOS, no sentinel), as int64."""
        ids = np.asarray(self.index.get_allowed_tokens(state) or [], dtype=np.int64)
        return ids[ids < self.backend.limit]

    def info(self, state: int) -> _StateInfo:
        b = self.backend
        if state == DONE:
            return b.done_info
        info = b.mask_cache.get((self.key, state))
        if info is None:
            allowed = self.allowed_ids(state)
            final = self.is_final(state)
            # NOTE: a dead state (nothing allowed, not final) cannot come from a sound Index;
            # if one appears, allow EOS so sampling stays defined, and report it terminated.
            empty = allowed.size == 0
            lcp = self._common_prefix(allowed)
            info = _StateInfo(b._mask_row(allowed, final or empty), final, empty, lcp)
            b.mask_cache.put((self.key, state), info)
        return info

    def _common_prefix(self, allowed: np.ndarray) -> bytes:
        """Longest common prefix of the bytes of the ``allowed`` ids. NOTE: a free-text state
        allows most of the vocabulary; their first bytes differ, which one vectorised gather
        shows without building a list of every token's bytes."""
        if allowed.size == 0:
            return b""
        first = self.backend.first_bytes[allowed]
        if (first != first[0]).any():
            return b""
        token_bytes = self.backend.vocab.token_bytes
        pieces = [token_bytes[i] for i in allowed.tolist()]
        return os.path.commonprefix([min(pieces), max(pieces)])

    def next_state(self, state: int, token_id: int) -> int | None:
        b = self.backend
        if state == DONE:
            return DONE if token_id in b.eos_set else None
        if token_id in b.eos_set:
            info = self.info(state)
            return DONE if info.final or info.terminated else None
        if not 0 <= token_id < b.limit:
            return None
        return self.index.get_next_state(state, token_id)

    def common_prefix(self, state: int) -> bytes:
        """Longest common prefix of the bytes of all real tokens allowed in ``state``."""
        return self.info(state).lcp


class OutlinesMatcher(GrammarMatcher):
    """One request's cursor: the current state and the states before each accepted token."""

    __slots__ = ("grammar", "state", "history")

    def __init__(self, grammar: OutlinesGrammar, state: int, history: array) -> None:
        self.grammar = grammar
        self.state = state
        self.history = history

    def fill_mask(self, mask: torch.Tensor, row: int) -> None:
        mask[row].copy_(self.grammar.info(self.state).mask)

    def advance(self, token_id: int) -> bool:
        nxt = self.grammar.next_state(self.state, int(token_id))
        if nxt is None:
            return False
        self.history.append(self.state)
        self.state = nxt
        return True

    def is_terminated(self) -> bool:
        return self.grammar.info(self.state).terminated

    def is_final(self) -> bool:
        return self.grammar.is_final(self.state)

    def rollback(self, num_tokens: int) -> None:
        if not 0 <= num_tokens <= len(self.history):
            raise ValueError(f"cannot roll back {num_tokens} of {len(self.history)} tokens")
        if num_tokens:
            self.state = self.history[-num_tokens]
            del self.history[-num_tokens:]

    def copy(self) -> OutlinesMatcher:
        return OutlinesMatcher(self.grammar, self.state, array("q", self.history))

    def forced_bytes(self) -> bytes:
        g = self.grammar
        ids_by_bytes = g.backend.vocab.ids_by_bytes
        out = bytearray()
        state: int | None = self.state
        while state is not None and len(out) < MAX_FORCED_BYTES:
            if g.is_final(state):
                break
            prefix = g.common_prefix(state)
            if not prefix:
                break
            out += prefix
            # Continue from the state after a token spelling exactly the forced prefix.
            candidates = (g.index.get_next_state(state, i) for i in ids_by_bytes.get(prefix, ()))
            state = next((s for s in candidates if s is not None), None)
        return bytes(out)
