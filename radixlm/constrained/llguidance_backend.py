"""Grammar backend on llguidance: spec → llguidance grammar → lazily built Earley parser + lexer.

- ``LLGuidanceBackend`` owns the byte view of the vocabulary (``TokenVocabulary``) and the
  ``llguidance.LLTokenizer`` (its token trie, shared by every grammar; built on the first
  compile, so on a compile thread: about 1 s for a 50k vocabulary).
- ``LLGuidanceGrammar`` (a ``CompiledGrammar``) holds one validated ``LLMatcher`` at the initial
  state; ``matcher()`` deep-copies it (cheap: the compiled grammar and lexer are shared).
- ``LLGuidanceMatcher`` wraps one ``LLMatcher`` plus the history of accepted tokens.

Compared with outlines-core, nothing is precomputed per state: compiling only parses the
grammar (milliseconds even for large schemas, so no size guards), and each mask is computed on
demand by walking the token trie (tens of µs for a 50k vocabulary). llguidance also takes
Lark/GBNF grammars (kind ``ebnf``) and enforces more of JSON Schema (numeric bounds among
others). It always runs in strict mode (``lenient`` off): the keywords it does not enforce
(``LLGUIDANCE_SUPPORT``) are refused or removed and reported before it sees the schema
(``schema_exact``), never skipped silently. Objects with ``properties`` get no extra
properties unless the schema allows them explicitly, as with outlines-core
(``schema_support.closed_objects``).

Tokenization: a tokenizer with a ``backend_tokenizer`` (Hugging Face ``tokenizers``) is handed
to llguidance as is, so it tokenizes natively and canonically; other vocabularies (hand-made,
custom) go through ``TokenizerWrapper`` with a greedy longest-match tokenizer.
NOTE: llguidance lets a mask allow only the canonical tokenization of text the grammar forces
(``{"name": "`` is offered as the tokens the tokenizer would produce, not any split of it),
whereas ``advance`` accepts any split; outlines-core allows any split in both. Jump-forward is
unaffected (it re-tokenizes with the real tokenizer).

Invariants (the same as ``OutlinesBackend``): a mask row has bits only for ids below
``min(len(tokenizer), vocab_size)`` that are not special (llguidance also never allows the
single-byte token 0xFF, its special-token marker; no UTF-8 text contains that byte) plus,
exactly in accepting states, every EOS id; accepting an EOS id moves a matcher to a terminated
state where only EOS is allowed; a state the grammar cannot leave (llguidance stopped, or in an
error state because the vocabulary cannot spell any continuation) counts as terminated once its
mask is computed, and allows EOS, so sampling stays defined.

NOTE: EOS is handled here, not by llguidance: consuming EOS is not a token llguidance can roll
back, and a second EOS is an error there, while our matchers accept EOS again after EOS and roll
it back like any token. Tokens are checked with ``validate_tokens`` before they are consumed
because a refused ``consume_token`` leaves an ``LLMatcher`` in a permanent error state.
"""

from __future__ import annotations

import copy
import logging
import threading
from typing import Any

import torch

from radixlm.constrained.base import (
    KINDS,
    CompiledGrammar,
    GrammarArtifact,
    GrammarBackend,
    GrammarMatcher,
    GrammarSpec,
    UnsupportedGrammarError,
)
from radixlm.constrained.schema_exact import SchemaSupport, Unenforced
from radixlm.constrained.schema_support import closed_objects
from radixlm.constrained.specs import (
    check_json_schema,
    check_spec,
    choices_regex,
    dtype_regex,
    first_line,
)
from radixlm.constrained.vocabulary import TokenVocabulary
from radixlm.errors import ConfigError, GrammarError

logger = logging.getLogger(__name__)

# What llguidance (strict mode) enforces exactly: each keyword and format is proven against
# jsonschema by tests/unit/test_schema_exact.py. ``oneOf`` is exact only once
# ``schema_rewrite`` has proven its branches disjoint (it is then an ``anyOf``).
LLGUIDANCE_SUPPORT = SchemaSupport(
    name="llguidance",
    exact=frozenset(
        {
            "$ref", "type", "enum", "const", "properties", "required", "additionalProperties",
            "patternProperties", "minProperties", "maxProperties", "items", "prefixItems",
            "additionalItems", "minItems", "maxItems", "anyOf", "allOf", "minLength",
            "maxLength", "pattern", "format", "minimum", "maximum", "exclusiveMinimum",
            "exclusiveMaximum", "multipleOf",
        }
    ),
    formats=frozenset(
        {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid",
         "uri"}
    ),
)  # fmt: skip


def _llguidance() -> Any:
    """The ``llguidance`` module (a dependency, imported on first use), or a ``ConfigError``
    saying how to repair a broken install."""
    try:
        import llguidance
    except ImportError as e:
        raise ConfigError(
            f"the llguidance package (a dependency of radixlm) cannot be imported ({e}); "
            "reinstall it: pip install 'llguidance>=1.0'"
        ) from e
    return llguidance


def tokenizer_json(tokenizer: Any) -> str | None:
    """The ``tokenizer.json`` text of a Hugging Face fast tokenizer (padding and truncation off,
    as llguidance expects), ``tokenizer`` itself if it is that text already, else None."""
    if tokenizer is None or isinstance(tokenizer, str):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    backend = copy.copy(backend)
    backend.no_padding()
    backend.no_truncation()
    return backend.to_str()


class _VocabTokenizer:
    """What ``llguidance.TokenizerWrapper`` needs: token bytes, EOS, and a tokenize function,
    here a greedy longest match over the vocabulary (llguidance uses it to tokenize text the
    grammar forces; see the module docstring)."""

    def __init__(self, vocab: TokenVocabulary, vocab_size: int, limit: int) -> None:
        self.eos_token_id = vocab.eos_token_ids[0]
        self.bos_token_id = None
        # Ids that must never be allowed (special, EOS, padding) get no bytes: llguidance never
        # allows an empty token.
        self.tokens = [
            (vocab.token_bytes[i] or b"") if i < limit else b"" for i in range(vocab_size)
        ]
        self.special_token_ids: list[int] = []
        self._ids = {b: ids[0] for b, ids in vocab.ids_by_bytes.items() if ids[0] < limit}
        self._longest = max(map(len, self._ids), default=1)

    def __call__(self, text: bytes | str) -> list[int]:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        out, i = [], 0
        while i < len(data):
            for j in range(min(len(data), i + self._longest), i, -1):
                tok = self._ids.get(data[i:j])
                if tok is not None:
                    out.append(tok)
                    i = j
                    break
            else:
                i += 1  # a byte no token spells: skip it (the grammar cannot produce it either)
        return out


class LLGuidanceBackend(GrammarBackend):
    """Compiles ``GrammarSpec`` s over one tokenizer's vocabulary with llguidance.

    ``whitespace_pattern``: the whitespace JSON allows between tokens (default none: the
    compact layout; any regex, llguidance puts it between any two JSON tokens); ``max_depth``
    bounds the nesting of the ``json_object`` kind, as with outlines; JSON Schema keywords
    outside ``LLGUIDANCE_SUPPORT`` follow ``policy_for`` (refused, or dropped and reported).
    """

    name = "llguidance"
    kinds = KINDS
    json_support = LLGUIDANCE_SUPPORT

    def _setup(self, tokenizer: Any) -> None:
        llg = _llguidance()
        self._tokenizer = tokenizer  # a Hugging Face tokenizer, its tokenizer.json text, or None
        self._ll_tokenizer: Any = None
        self._lock = threading.Lock()
        self._parser_limits = llg.LLParserLimits(verbose_errors=False)

    @property
    def ll_tokenizer(self) -> Any:
        """The ``llguidance.LLTokenizer`` (built on first use; thread-safe)."""
        with self._lock:
            if self._ll_tokenizer is None:
                self._ll_tokenizer = self._build_ll_tokenizer()
            return self._ll_tokenizer

    def _build_ll_tokenizer(self) -> Any:
        llg = _llguidance()
        eos = list(self.eos_token_ids)
        text = tokenizer_json(self._tokenizer)
        if text is not None:
            try:
                return llg.LLTokenizer(text, n_vocab=self.vocab_size, eos_token=eos)
            except Exception as e:  # a tokenizer.json llguidance cannot read: greedy fallback
                logger.warning("llguidance cannot load the tokenizer natively (%s)", e)
        wrapper = llg.TokenizerWrapper(_VocabTokenizer(self.vocab, self.vocab_size, self.limit))
        return llg.LLTokenizer(wrapper, n_vocab=self.vocab_size, eos_token=eos)

    # ---- spec → llguidance grammar -----------------------------------------------------------
    def grammar_text(
        self, spec: GrammarSpec, policy: str | None = None, closed: bool = True
    ) -> tuple[str, tuple[Unenforced, ...]]:
        """The llguidance grammar (its JSON format) for ``spec`` and the schema keywords it does
        not enforce; ``GrammarError`` if invalid. ``closed``: objects get no extra properties
        unless allowed (``closed_objects``)."""
        llm = _llguidance().LLMatcher
        check_spec(spec, self.limits)
        if spec.kind == "regex":
            return llm.grammar_from_regex(spec.value), ()
        if spec.kind == "choices":
            return llm.grammar_from_regex(choices_regex(spec.value)), ()
        if spec.kind == "dtype":
            return llm.grammar_from_regex(dtype_regex(spec.value)), ()
        if spec.kind == "ebnf":
            try:  # Lark syntax, or GBNF (``root ::= ...``), which llguidance converts to Lark
                return _llguidance().grammar_from("ebnf", spec.value), ()
            except ValueError as e:
                raise GrammarError(f"invalid ebnf grammar: {first_line(e)}") from e
        unenforced: tuple[Unenforced, ...] = ()
        if spec.kind == "json_object":
            schema: Any = json_object_schema(self.limits.max_depth)
        else:
            schema, unenforced = self.enforceable_schema(
                check_json_schema(spec.value), self.policy_for(spec, policy)
            )
            if closed:
                schema = closed_objects(schema)
        try:
            return llm.grammar_from_json_schema(schema, overrides=self._json_options()), unenforced
        except ValueError as e:
            raise GrammarError(f"json_schema cannot be read: {first_line(e)}") from e

    def _json_options(self) -> dict[str, Any]:
        """Strict JSON Schema (``lenient`` off: ``schema_exact`` removed what is not enforced)
        and the JSON layout: compact by default, else the configured whitespace."""
        pattern = self.limits.whitespace_pattern
        if pattern is None:
            layout = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
        else:
            layout = {"whitespace_pattern": pattern}
        return {**layout, "lenient": False}

    def build(self, spec: GrammarSpec, policy: str | None = None) -> GrammarArtifact:
        grammar, unenforced = self.grammar_text(spec, policy)
        matcher = self._matcher(grammar)
        if matcher.is_error() and spec.kind == "json_schema":
            # Closing the objects can make a schema unsatisfiable (an intersection it did not
            # recognise): the schema as written then decides.
            open_grammar, _ = self.grammar_text(spec, policy, closed=False)
            open_matcher = self._matcher(open_grammar)
            if not open_matcher.is_error():
                grammar, matcher = open_grammar, open_matcher
        if not matcher.is_error():
            matcher.compute_bitmask()  # the first mask: a grammar that allows nothing fails now
        if matcher.is_error():
            message = first_line(matcher.get_error())
            if spec.kind == "json_schema" and "nimplemented" in message:
                raise UnsupportedGrammarError(
                    f"json_schema uses keywords the llguidance engine cannot enforce: {message}"
                )
            raise GrammarError(f"the {spec.kind} constraint cannot be compiled: {message}")
        return GrammarArtifact(self.name, spec, grammar, unenforced)

    def load(self, artifact: GrammarArtifact) -> LLGuidanceGrammar:
        matcher = self._matcher(artifact.payload)
        if matcher.is_error():
            raise GrammarError(f"cannot load the grammar: {first_line(matcher.get_error())}")
        return LLGuidanceGrammar(self, artifact, matcher)

    def _matcher(self, grammar: str) -> Any:
        # NOTE: the constructor releases the GIL while it builds the grammar, and the tokenizer
        # is shared read-only, so compiles on several threads overlap safely.
        llg = _llguidance()
        return llg.LLMatcher(self.ll_tokenizer, grammar, log_level=0, limits=self._parser_limits)


def json_object_schema(max_depth: int) -> dict:
    """A JSON schema for "any JSON object whose objects/arrays nest at most ``max_depth`` levels"
    (the top object is level 1), like the outlines backend's ``json_object`` regex."""
    scalar = {"type": ["string", "number", "boolean", "null"]}
    defs: dict[str, Any] = {}
    for level in range(max_depth, 0, -1):  # innermost first; level k values may be level k+1
        inner: Any = scalar
        if level < max_depth:
            deeper = f"#/$defs/level{level + 1}"
            inner = {"anyOf": [scalar, {"$ref": f"{deeper}_object"}, {"$ref": f"{deeper}_array"}]}
        defs[f"level{level}_object"] = {"type": "object", "additionalProperties": inner}
        defs[f"level{level}_array"] = {"type": "array", "items": inner}
    return {"$ref": "#/$defs/level1_object", "$defs": defs}


class LLGuidanceGrammar(CompiledGrammar):
    """A compiled llguidance grammar; ``prototype`` is an ``LLMatcher`` that is never advanced."""

    def __init__(
        self, backend: LLGuidanceBackend, artifact: GrammarArtifact, prototype: Any
    ) -> None:
        self.backend = backend
        self.spec = artifact.spec
        self.backend_name = artifact.backend
        self.unenforced = artifact.unenforced
        self.prototype = prototype

    def matcher(self) -> LLGuidanceMatcher:
        return LLGuidanceMatcher(self, self.prototype.deep_copy(), [])


class LLGuidanceMatcher(GrammarMatcher):
    """One request's ``LLMatcher`` plus ``history``, every token accepted. EOS ids in it were
    accepted here and never passed to llguidance; they end the output, so they only ever form
    the tail of the history."""

    __slots__ = ("grammar", "ll", "history")

    def __init__(self, grammar: LLGuidanceGrammar, ll: Any, history: list[int]) -> None:
        self.grammar = grammar
        self.ll = ll
        self.history = history

    @property
    def _done(self) -> bool:
        return bool(self.history) and self.history[-1] in self.grammar.backend.eos_set

    def fill_mask(self, mask: torch.Tensor, row: int) -> None:
        target = mask[row]
        eos_mask = self.grammar.backend.eos_mask
        if self._done or self.ll.is_stopped():
            target.copy_(eos_mask)
            return
        assert target.is_cpu and target.is_contiguous() and target.dtype == torch.int32
        self.ll.unsafe_compute_mask_ptr(target.data_ptr(), target.numel() * 4)
        if self.ll.is_error():  # nothing can follow (see the module docstring)
            target.copy_(eos_mask)

    def advance(self, token_id: int) -> bool:
        token_id = int(token_id)
        backend = self.grammar.backend
        if token_id in backend.eos_set:
            if not self.is_final() and not self.is_terminated():
                return False
        elif self._done or not 0 <= token_id < backend.limit:
            return False
        elif self.ll.validate_tokens([token_id]) != 1 or not self.ll.consume_token(token_id):
            return False
        self.history.append(token_id)
        return True

    def is_terminated(self) -> bool:
        return self._done or self.ll.is_stopped()

    def is_final(self) -> bool:
        return self._done or self.ll.is_accepting()

    def rollback(self, num_tokens: int) -> None:
        if not 0 <= num_tokens <= len(self.history):
            raise ValueError(f"cannot roll back {num_tokens} of {len(self.history)} tokens")
        if not num_tokens:
            return
        eos = self.grammar.backend.eos_set
        consumed = sum(t not in eos for t in self.history[-num_tokens:])
        del self.history[-num_tokens:]
        if consumed and not self.ll.rollback(consumed):
            # An LLMatcher in an error state cannot roll back: replay the kept tokens instead.
            self.ll = self.grammar.prototype.deep_copy()
            kept = [t for t in self.history if t not in eos]
            if kept and not self.ll.consume_tokens(kept):
                raise RuntimeError("llguidance refused to replay tokens it accepted before")

    def copy(self) -> LLGuidanceMatcher:
        return LLGuidanceMatcher(self.grammar, self.ll.deep_copy(), list(self.history))

    def error(self) -> str | None:
        return first_line(self.ll.get_error()) if self.ll.is_error() else None

    def forced_bytes(self) -> bytes:
        if self.is_terminated() or self.is_final():
            return b""
        return bytes(self.ll.compute_ff_bytes())
