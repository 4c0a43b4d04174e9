"""The grammar interface the scheduler uses; backends (outlines-core, …) implement it.

- ``GrammarSpec``: what a request asks for (kind + value); hashable, the compile-cache key.
- ``CompiledGrammar``: the expensive, immutable, shared artifact of one spec (an FSM over the
  tokenizer's vocabulary). Compiled once per spec, off the scheduler thread.
- ``GrammarMatcher``: one request's cursor over a compiled grammar (cheap to create and copy).
- ``GrammarBackend``: compiles specs and owns the vocabulary view; also allocates and applies
  the vocab bitmask (int32, 32 tokens per word, bit set = token allowed).

Invariants: a matcher only ever advances by tokens it allowed; EOS is allowed exactly in final
states; ``is_terminated()`` means "final and nothing but EOS is allowed" (the request ends).
A backend refuses a spec it cannot handle with ``GrammarError``; when the spec is valid but
beyond this backend (a missing feature, a size guard, a JSON Schema keyword it does not enforce
exactly under the ``exact`` policy), with ``UnsupportedGrammarError``, so that
``--grammar-backend auto`` can hand it to another backend.

Compiling has two halves so that the slow one can run in a killable worker process
(``compile_workers.py``): ``build(spec, policy)`` does all the work and returns a picklable
``GrammarArtifact``; ``load(artifact)`` turns it into a ``CompiledGrammar`` in milliseconds.
``compile`` is both in one call. A ``CompiledGrammar`` knows which backend built it, the JSON
Schema keywords it does not enforce (``unenforced``, each with its JSON pointer), and checks a
finished output against the schema the user sent (``check_output``).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from radixlm.constrained.output_check import OutputCheck
from radixlm.constrained.schema_exact import SchemaSupport, Unenforced, enforceable
from radixlm.constrained.vocabulary import TokenVocabulary, build_token_vocabulary
from radixlm.errors import ConfigError, GrammarError

# Spec kinds. ``dtype`` values: "int", "float", "bool", "str" (the frontend's gen(dtype=...));
# ``ebnf``: a Lark or GBNF grammar (only backends whose ``kinds`` include it).
KINDS = ("regex", "json_schema", "json_object", "choices", "dtype", "ebnf")


class UnsupportedGrammarError(GrammarError):
    """A valid spec that this backend cannot compile (a feature it lacks, one of its size
    guards, its time budget); another backend may."""


# What a backend does with JSON Schema keywords it cannot enforce (``schema_exact``):
# "exact" refuses the schema as unsupported (``auto`` then tries the next backend), "ignore"
# drops them and reports them, "reject" refuses the schema with a 400 that names them.
POLICIES = ("exact", "ignore", "reject")


@dataclass(frozen=True)
class GrammarSpec:
    kind: str  # one of KINDS
    value: str  # regex | JSON schema text | "" (json_object) | JSON list of strings | dtype name

    @classmethod
    def from_request(
        cls, regex: str | None, json_schema: str | None, ebnf: str | None = None
    ) -> GrammarSpec | None:
        """The spec of a request's ``regex`` / ``json_schema`` / ``ebnf`` sampling parameters.

        The schema ``{"type": "object"}`` (what OpenAI's JSON mode maps to) means "any JSON
        object": the ``json_object`` kind, with its bounded nesting depth.
        """
        if regex is not None:
            return cls("regex", regex)
        if ebnf is not None:
            return cls("ebnf", ebnf)
        if json_schema is None:
            return None
        try:
            if json.loads(json_schema) == {"type": "object"}:
                return cls("json_object", "")
        except (ValueError, RecursionError):
            pass  # the backend reports the invalid JSON
        return cls("json_schema", json_schema)


@dataclass(frozen=True)
class GrammarArtifact:
    """What ``GrammarBackend.build`` hands to ``load``: picklable, so it can come back from a
    worker process. ``payload`` is the backend's own (an llguidance grammar, a serialised
    outlines-core ``Index``); ``unenforced`` the schema keywords the grammar does not enforce."""

    backend: str  # the name of the backend that built it (``auto`` loads with that one)
    spec: GrammarSpec
    payload: Any
    unenforced: tuple[Unenforced, ...] = ()


class GrammarMatcher(ABC):
    """One request's position in a compiled grammar."""

    @abstractmethod
    def fill_mask(self, mask: torch.Tensor, row: int) -> None:
        """Write the allowed-token bits of the current state into ``mask[row]`` (int32 words)."""

    @abstractmethod
    def advance(self, token_id: int) -> bool:
        """Consume a token; False (and no state change) if the grammar does not allow it."""

    @abstractmethod
    def is_terminated(self) -> bool:
        """In a final state with nothing but EOS allowed: the output is complete."""

    @abstractmethod
    def is_final(self) -> bool:
        """The output so far is a complete match (EOS is allowed now)."""

    @abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undo the last ``num_tokens`` advances."""

    @abstractmethod
    def copy(self) -> GrammarMatcher:
        """An independent matcher in the same state."""

    @abstractmethod
    def forced_bytes(self) -> bytes:
        """The continuation every accepted output must start with from here (b"" if none).

        Used by jump-forward: e.g. after ``{`` of a schema with a required first property, the
        forced continuation is ``"name": "``.
        """

    def error(self) -> str | None:
        """Why the matcher cannot go on, when it hit one of its own limits (e.g. llguidance's
        lexer size) rather than a token its grammar forbids; None otherwise."""
        return None


class CompiledGrammar(ABC):
    """Shared by every request with the same spec. Subclasses set ``spec``, ``backend_name`` and
    ``unenforced`` (from the artifact)."""

    spec: GrammarSpec
    backend_name: str
    unenforced: tuple[Unenforced, ...] = ()
    _output_check: OutputCheck | None = None

    @abstractmethod
    def matcher(self) -> GrammarMatcher:
        """A fresh matcher at the initial state."""

    def check_output(self, text: str) -> tuple[bool | None, str | None]:
        """``(valid, error)`` of a complete output: JSON kinds are parsed and validated against
        the schema as the user sent it (``None`` for kinds that are not checked)."""
        if self._output_check is None:
            self._output_check = OutputCheck(self.spec)
        return self._output_check(text)


@dataclass(frozen=True)
class SpecLimits:
    """A backend's options for specs and its size limits (each limit → ``GrammarError``); the
    regex limits apply to the spec → regex conversion (``specs.py``)."""

    # JSON whitespace between tokens (a regex); None = the compact layout of
    # ``json.dumps(separators=(",", ":"))``, no whitespace at all (forced runs stay long).
    whitespace_pattern: str | None = None
    max_depth: int = 3  # json_object: nesting levels of objects/arrays
    max_spec_chars: int = 262_144
    max_regex_chars: int = 200_000
    max_regex_expansion: int = 100_000  # atoms after unrolling counted repeats ({m,n})
    # Free-text positions (wide classes after unrolling); the backend derives it from its
    # vocabulary size, since each such position costs about one FSM transition per token.
    max_wide_positions: int | None = None
    # JSON Schema keywords the backend cannot enforce (schema_exact.py): "ignore" or "reject".
    unenforced: str = "ignore"


_Backend = TypeVar("_Backend", bound="GrammarBackend")


class GrammarBackend(ABC):
    """Compiles specs over one vocabulary. Construct a concrete backend over a Hugging Face
    tokenizer (``Backend(tokenizer, vocab_size, eos_token_ids, ...)``) or over a prepared
    ``TokenVocabulary`` (``Backend.from_vocabulary(vocab, vocab_size, ...)``); ``options`` are
    ``unenforced`` and ``max_spec_chars`` (``SpecLimits``), ``tokenizer`` (the one the
    vocabulary was built from, if any) and the backend's own keywords (its ``_setup``).
    """

    name: str  # the ``--grammar-backend`` name
    vocab_size: int  # rows of the model's logits (may exceed the tokenizer's vocabulary)
    kinds: tuple[str, ...] = KINDS  # the spec kinds ``compile`` accepts
    json_support: SchemaSupport | None = None  # the JSON Schema keywords it enforces exactly

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        eos_token_ids: Sequence[int],
        whitespace_pattern: str | None = None,
        max_depth: int = 3,
        **options: Any,
    ) -> None:
        vocab = build_token_vocabulary(tokenizer, vocab_size, eos_token_ids)
        self._bind(vocab, vocab_size, whitespace_pattern, max_depth, tokenizer=tokenizer, **options)

    @classmethod
    def from_vocabulary(
        cls: type[_Backend],
        vocabulary: TokenVocabulary,
        vocab_size: int | None = None,
        whitespace_pattern: str | None = None,
        max_depth: int = 3,
        **options: Any,
    ) -> _Backend:
        """A backend over a prepared vocabulary (tests, custom tokenizers, ``auto``)."""
        self = cls.__new__(cls)
        size = vocabulary.size if vocab_size is None else vocab_size
        self._bind(vocabulary, size, whitespace_pattern, max_depth, **options)
        return self

    def _bind(
        self,
        vocab: TokenVocabulary,
        vocab_size: int,
        whitespace_pattern: str | None,
        max_depth: int,
        *,
        unenforced: str = "ignore",
        max_spec_chars: int = 262_144,
        tokenizer: Any = None,
        **options: Any,
    ) -> None:
        """Set the vocabulary fields every backend shares, then ``_setup`` the backend's own.
        Ids ``>= limit`` (model padding rows) are never allowed."""
        if not 1 <= max_depth <= 8:
            raise ConfigError(f"the json_object max_depth must be in [1, 8], got {max_depth}")
        self.vocab = vocab
        self.vocab_size = vocab_size
        self.words = (vocab_size + 31) // 32
        self.limit = min(vocab.size, vocab_size)  # real ids are below this
        self.eos_token_ids = tuple(i for i in vocab.eos_token_ids if 0 <= i < vocab_size)
        self.eos_set = frozenset(self.eos_token_ids)
        self.eos_mask = self._mask_row(np.zeros(0, dtype=np.int64), final=True)  # [words]
        self.limits = SpecLimits(
            whitespace_pattern=whitespace_pattern,
            max_depth=max_depth,
            unenforced=unenforced,
            max_spec_chars=max_spec_chars,
        )
        self._setup(tokenizer, **options)

    def supports(self, kind: str) -> bool:
        """Whether ``compile`` accepts specs of ``kind`` at all (a request can be refused early)."""
        return kind in self.kinds

    @abstractmethod
    def build(self, spec: GrammarSpec, policy: str | None = None) -> GrammarArtifact:
        """Slow (may run in a worker process): everything ``load`` needs. Raises
        ``GrammarError`` naming the problem for a bad spec. ``policy`` (``POLICIES``) overrides
        ``policy_for``'s choice for unenforceable JSON Schema keywords."""

    @abstractmethod
    def load(self, artifact: GrammarArtifact) -> CompiledGrammar:
        """Fast: the compiled grammar of an artifact this backend (same options) built."""

    def compile(self, spec: GrammarSpec, policy: str | None = None) -> CompiledGrammar:
        """``build`` then ``load``, in this process."""
        return self.load(self.build(spec, policy))

    def policy_for(self, spec: GrammarSpec, policy: str | None = None) -> str:
        """What to do with unenforceable keywords: ``policy`` if given, else the operator's
        ``--json-schema-unenforced``."""
        if policy is not None and policy not in POLICIES:
            raise ConfigError(f"unknown policy {policy!r}; expected one of {list(POLICIES)}")
        return policy or self.limits.unenforced

    def enforceable_schema(self, schema: Any, policy: str) -> tuple[Any, tuple[Unenforced, ...]]:
        """``schema`` rewritten into what this backend enforces exactly, and the keywords it
        dropped (only under "ignore"); see ``schema_exact.enforceable``."""
        assert self.json_support is not None
        return enforceable(schema, self.json_support, policy)

    def close(self) -> None:  # noqa: B027 (an optional hook: most backends own no threads)
        """Release the backend's own threads, if any (compiled grammars stay usable)."""

    def _setup(self, tokenizer: Any) -> None:  # noqa: B027 (a hook; its keywords are options)
        """Build the backend's own state over the bound vocabulary (``tokenizer`` may be None)."""

    def _mask_row(self, allowed: np.ndarray, final: bool) -> torch.Tensor:
        """``[words]`` int32 mask row of real ``allowed`` ids (and every EOS id when ``final``)."""
        bits = np.zeros(self.words * 32, dtype=np.bool_)
        bits[allowed] = True
        if final:
            bits[list(self.eos_token_ids)] = True
        # bit j of word w = token 32*w + j: pack little-endian bits, read little-endian words.
        words = np.packbits(bits, bitorder="little").view("<i4").astype(np.int32)
        return torch.from_numpy(words)

    def allocate_mask(self, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``[batch_size, ceil(vocab_size / 32)]`` int32, all tokens allowed (-1)."""
        words = (self.vocab_size + 31) // 32
        return torch.full((batch_size, words), -1, dtype=torch.int32, device=device)

    @staticmethod
    def apply_mask(logits: torch.Tensor, mask: torch.Tensor) -> None:
        """Set disallowed logits to -inf in place. ``logits [B, V]``, ``mask [B, words]``."""
        vocab = logits.shape[1]
        bits = torch.arange(32, dtype=torch.int32, device=mask.device)
        allowed = ((mask.unsqueeze(-1) >> bits) & 1).bool().reshape(mask.shape[0], -1)  # [B, 32w]
        logits.masked_fill_(~allowed[:, :vocab].to(logits.device), float("-inf"))
