"""Backend selection: ``--grammar-backend`` name → a ``GrammarBackend`` (backends imported lazily).

- ``llguidance``: llguidance's Earley parser, strict JSON Schema. Compiles in milliseconds,
  computes each mask on demand (tens of µs), takes the most of JSON Schema, and ``ebnf``.
- ``outlines``: outlines-core. Compiles a spec to a regex and a token-level DFA up front, so a
  mask is a cached row copy (a few µs); compiling can take seconds, and specs beyond the regex
  conversion or its size guards are refused.
- ``xgrammar``: xgrammar (optional: ``pip install 'radixlm[xgrammar]'``), SGLang's default.
- ``auto`` (default): ``AutoBackend`` — per spec kind, a fixed chain of backends, each asked to
  enforce the spec *exactly*; the first that can serves it. Only the last one applies the
  user's policy for keywords no backend enforces (drop and report them, or refuse them).

Invariants: which backend serves a spec depends on the spec alone, never on timing or load
(so a greedy request gives the same output on an idle or a loaded machine); every backend
returned here has the same ``vocab_size``, bitmask layout and EOS ids (they share one
``TokenVocabulary``), so matchers of different backends can share a batch mask.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from radixlm.constrained.base import (
    CompiledGrammar,
    GrammarArtifact,
    GrammarBackend,
    GrammarSpec,
    UnsupportedGrammarError,
)
from radixlm.constrained.vocabulary import TokenVocabulary, build_token_vocabulary
from radixlm.errors import ConfigError, GrammarError

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "llguidance", "outlines", "xgrammar")
# ``auto``'s chain per spec kind: every backend but the last must enforce the spec exactly.
# JSON Schema: llguidance first (milliseconds to compile, the most keywords), outlines-core
# for what it alone translates exactly, then llguidance again under the user's policy.
AUTO_CHAINS = {
    "json_schema": ("llguidance", "outlines", "llguidance"),
    "json_object": ("llguidance",),
    "ebnf": ("llguidance",),
    "regex": ("outlines", "llguidance"),
    "choices": ("outlines", "llguidance"),
    "dtype": ("outlines", "llguidance"),
}


@dataclass(frozen=True)
class BackendRecipe:
    """Everything needed to build the same backend again, picklable (a compile worker process
    builds its own copy from it). ``options``: ``whitespace_pattern``, ``unenforced``,
    ``max_spec_chars``; ``tokenizer``: the ``tokenizer.json`` text, if there is one."""

    name: str
    vocab: TokenVocabulary
    vocab_size: int
    options: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None

    def build(self) -> GrammarBackend:
        return _make(self.name, self)


def recipe_for(
    name: str,
    tokenizer: Any,
    vocab_size: int,
    eos_token_ids: Sequence[int],
    **options: Any,
) -> BackendRecipe:
    """The recipe of backend ``name`` over a Hugging Face ``tokenizer``; ``ConfigError`` for
    an unknown name."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown grammar backend {name!r}; expected one of {list(BACKENDS)}")
    from radixlm.constrained.llguidance_backend import tokenizer_json

    vocab = build_token_vocabulary(tokenizer, vocab_size, eos_token_ids)
    return BackendRecipe(name, vocab, vocab_size, options, tokenizer_json(tokenizer))


def create_backend(
    name: str,
    tokenizer: Any,
    vocab_size: int,
    eos_token_ids: Sequence[int],
    **options: Any,
) -> GrammarBackend:
    """The backend called ``name`` over ``tokenizer`` (``options``: see ``BackendRecipe``);
    ``ConfigError`` for an unknown name or a backend whose package is not installed."""
    return recipe_for(name, tokenizer, vocab_size, eos_token_ids, **options).build()


def _make(name: str, recipe: BackendRecipe) -> GrammarBackend:
    args = (recipe.vocab, recipe.vocab_size)
    kwargs = {**recipe.options, "tokenizer": recipe.tokenizer}
    if name == "llguidance":
        from radixlm.constrained.llguidance_backend import LLGuidanceBackend

        return LLGuidanceBackend.from_vocabulary(*args, **kwargs)
    if name == "outlines":
        from radixlm.constrained.outlines_backend import OutlinesBackend

        return OutlinesBackend.from_vocabulary(*args, **kwargs)
    if name == "xgrammar":
        from radixlm.constrained.xgrammar_backend import XGrammarBackend

        return XGrammarBackend.from_vocabulary(*args, **kwargs)
    members = {
        n: _make(n, recipe) for n in dict.fromkeys(n for c in AUTO_CHAINS.values() for n in c)
    }
    return AutoBackend(members)


class AutoBackend(GrammarBackend):
    """Serves each spec with the first backend of its kind's chain (``AUTO_CHAINS``) that
    enforces it exactly; the last backend of the chain applies the user's policy.
    ``stats`` counts which backend served how many specs."""

    name = "auto"

    def __init__(self, members: dict[str, GrammarBackend]) -> None:
        first = next(iter(members.values()))
        if any(m.vocab_size != first.vocab_size for m in members.values()):
            raise ConfigError("auto: all grammar backends must have the same vocab_size")
        self.members = members
        self.vocab = first.vocab
        self.vocab_size = first.vocab_size
        self.limits = first.limits
        self.eos_token_ids = first.eos_token_ids
        self.kinds = tuple(k for k, chain in AUTO_CHAINS.items() if chain)
        self.stats: dict[str, int] = {name: 0 for name in members}

    def build(self, spec: GrammarSpec, policy: str | None = None) -> GrammarArtifact:
        chain = [self.members[n] for n in AUTO_CHAINS.get(spec.kind, ())]
        if not chain:
            raise UnsupportedGrammarError(f"no grammar backend takes {spec.kind} constraints")
        for backend in chain[:-1]:
            if not backend.supports(spec.kind):
                continue
            try:
                artifact = backend.build(spec, "exact")
            except UnsupportedGrammarError as e:
                logger.debug("auto: %s does not take this %s spec: %s", backend.name, spec.kind, e)
                continue
            self.stats[backend.name] += 1
            return artifact
        artifact = chain[-1].build(spec, policy)
        self.stats[chain[-1].name] += 1
        return artifact

    def load(self, artifact: GrammarArtifact) -> CompiledGrammar:
        return self.members[artifact.backend].load(artifact)

    def close(self) -> None:
        for member in self.members.values():
            member.close()


def check_enforceable(schema_text: str, name: str) -> None:
    """Refuse up front (``GrammarError``, a 400) a JSON schema with keywords that backend
    ``name`` (for ``auto``: every backend of its chain) cannot enforce exactly, naming each
    keyword and its JSON pointer. For OpenAI ``strict: true`` and
    ``--json-schema-unenforced reject``; decided from the schema alone, as ``build`` does."""
    from radixlm.constrained.llguidance_backend import LLGUIDANCE_SUPPORT
    from radixlm.constrained.outlines_schema import OUTLINES_SUPPORT
    from radixlm.constrained.schema_exact import describe, find_unenforced
    from radixlm.constrained.schema_rewrite import normalize
    from radixlm.constrained.specs import check_json_schema

    supports = {"llguidance": [LLGUIDANCE_SUPPORT], "outlines": [OUTLINES_SUPPORT]}
    supports["auto"] = [LLGUIDANCE_SUPPORT, OUTLINES_SUPPORT]
    if name == "xgrammar":
        from radixlm.constrained.xgrammar_schema import XGRAMMAR_SUPPORT

        supports["xgrammar"] = [XGRAMMAR_SUPPORT]
    if name not in supports:
        return  # "none": constrained requests are refused anyway
    normalized = normalize(check_json_schema(schema_text))
    first = None
    for support in supports[name]:
        found = find_unenforced(normalized, support)
        if not found:
            return
        first = first or found
    raise GrammarError(
        f"json_schema uses keywords this server cannot enforce exactly: {describe(first or [])}. "
        "Remove them; or, unless the server runs with --json-schema-unenforced reject, send the "
        "request without strict mode: it is then decoded with those keywords dropped, and the "
        "response names them (constraint.unenforced)"
    )
