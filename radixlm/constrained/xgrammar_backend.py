"""Grammar backend on xgrammar (SGLang's default): spec → ``xgrammar.Grammar`` → compiled
pushdown automaton with a cache of context-independent token masks (built on first use).

- ``XGrammarBackend`` owns one ``xgrammar.TokenizerInfo`` over the byte view of the vocabulary
  (``VocabType.RAW``: each id's exact bytes, so every backend agrees on what an id spells;
  ``None`` entries and padding rows are special there, never allowed) and one
  ``xgrammar.GrammarCompiler`` (its cache off: the caller caches compiled grammars).
- ``build`` compiles; its payload pickles as the grammar's JSON (kilobytes) and ``load``
  compiles that again in milliseconds (``XGrammarPayload``).
- ``XGrammarMatcher`` wraps one ``xgrammar.GrammarMatcher`` plus the tokens it accepted.

JSON layout: compact (``,`` and ``:``, no whitespace) when there is no whitespace pattern;
with one, xgrammar's ``any_whitespace`` with at most as many characters in a row as the
pattern matches. Objects with ``properties`` get no extra properties unless allowed
(``closed_objects``, as with the other backends). ``json_object`` is the bounded-depth schema of
``json_object_schema``; ``ebnf`` is GBNF (``root ::= ...``) or Lark.

JSON Schema (xgrammar 0.2.9): ``XGRAMMAR_SUPPORT`` is what it enforces exactly, each keyword and
format proven against ``jsonschema`` by tests/unit/test_constrained_xgrammar.py;
``xgrammar_check`` reports the combinations it gets wrong, ``distribute`` rewrites the siblings
of ``anyOf``/``oneOf`` into the branches (xgrammar ignores them), and ``IGNORED_KEYWORDS`` are
those it drops or loosens silently. Its layout is narrower than JSON Schema in places that still
validate: properties in schema order, no escapes in strings with length bounds, ``pattern`` or
``format``, ``pattern`` matched against the whole string, numbers with few decimals.

Invariants (as the other backends): a mask row has bits only for ids below
``min(vocab.size, vocab_size)`` with bytes plus, exactly in final states, every EOS id; accepting
an EOS id moves a matcher to a terminated state where only EOS is allowed; a state whose mask
allows no token counts as terminated and allows EOS. Never allowed on top of xgrammar's masks
(it would allow them): a raw control character in JSON other than the layout's whitespace
(length-bounded strings), and bytes that spell a UTF-8 encoded surrogate (0xED 0xA0..0xBF).
NOTE: so a whitespace pattern that matches a tab or newline lets that character, raw, into
strings with ``minLength``/``maxLength`` (invalid JSON); the default compact layout does not.

NOTE: EOS is handled here, not by xgrammar (which refuses a second EOS and cannot take it back):
EOS ids never reach ``accept_token``, and ``is_terminated`` ("nothing but EOS allowed") is read
from the state's mask, computed once per state and reused by ``fill_mask``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
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
from radixlm.constrained.llguidance_backend import json_object_schema
from radixlm.constrained.schema_exact import Unenforced
from radixlm.constrained.schema_support import closed_objects, strip_anchors
from radixlm.constrained.specs import (
    check_json_schema,
    check_spec,
    choices_regex,
    dtype_regex,
    first_line,
    regex_cost,
)
from radixlm.constrained.xgrammar_schema import XGRAMMAR_SUPPORT, distribute
from radixlm.errors import ConfigError, GrammarError

try:  # CPython's regex parser, for the width of a whitespace pattern
    import re._parser as _sre_parse  # type: ignore[import-not-found]
except ImportError:  # Python < 3.11
    import sre_parse as _sre_parse  # type: ignore[no-redef]

_UNBOUNDED = 1 << 16  # a whitespace pattern at least this wide counts as unbounded
_SURROGATE = re.compile(rb"\xed[\xa0-\xbf]")


def _xgrammar() -> Any:
    """The ``xgrammar`` module (an optional dependency), or a ``ConfigError`` saying how to
    install it."""
    try:
        import xgrammar
    except ImportError as e:
        raise ConfigError(
            "--grammar-backend xgrammar needs the xgrammar package: "
            "pip install 'radixlm[xgrammar]' (or pip install xgrammar)"
        ) from e
    return xgrammar


def xgrammar_available() -> bool:
    try:
        _xgrammar()
    except ConfigError:
        return False
    return True


class XGrammarPayload:
    """An artifact's payload: the ``xgrammar.CompiledGrammar`` and its ``xgrammar.Grammar``;
    pickled, only the grammar's JSON (``load`` compiles it again: milliseconds with dynamic
    compilation). NOTE: a compiled grammar's own JSON holds every mask cache entry (p95 2 MB, up
    to 100 MB on JSONSchemaBench) and takes seconds to write and to read."""

    def __init__(self, compiled: Any, grammar: Any) -> None:
        self.compiled = compiled
        self.grammar = grammar  # an ``xgrammar.Grammar``, or its JSON once unpickled

    def __getstate__(self) -> dict[str, Any]:
        grammar = self.grammar if isinstance(self.grammar, str) else self.grammar.serialize_json()
        return {"compiled": None, "grammar": grammar}


class XGrammarBackend(GrammarBackend):
    """Compiles ``GrammarSpec`` s over one vocabulary with xgrammar.

    ``whitespace_pattern``: None (default) for compact JSON, else any JSON whitespace bounded by
    the pattern's width; ``max_depth`` bounds ``json_object``; JSON Schema keywords outside
    ``XGRAMMAR_SUPPORT`` follow ``policy_for``. Backend options: ``max_threads``, xgrammar's
    threads per compile; ``dynamic`` (default True), xgrammar's dynamic compilation: a mask
    cache entry is built on first use instead of all at compile time (on JSONSchemaBench with
    GPT-2: compiles 3x faster at the median and 30x at p95, masks about as fast).
    """

    name = "xgrammar"
    kinds = KINDS
    json_support = XGRAMMAR_SUPPORT

    def _setup(self, tokenizer: Any, max_threads: int = 4, dynamic: bool = True) -> None:
        xgr = _xgrammar()
        encoded = [b or b"" for b in self.vocab.token_bytes[: self.limit]]
        encoded += [b""] * (self.vocab_size - len(encoded))
        self.tokenizer_info = xgr.TokenizerInfo(
            encoded, xgr.VocabType.RAW, vocab_size=self.vocab_size,
            stop_token_ids=list(self.eos_token_ids),
        )  # fmt: skip
        self.compiler = xgr.GrammarCompiler(
            self.tokenizer_info,
            max_threads=max_threads,
            cache_enabled=False,
            enable_dynamic_compilation=dynamic,
        )
        self.not_eos = ~self.eos_mask
        # Never allowed: in JSON, a raw control character other than the layout's whitespace
        # (xgrammar lets them into strings with minLength/maxLength); anywhere, a UTF-8 encoded
        # surrogate (0xED 0xA0..0xBF: invalid UTF-8, which xgrammar allows in strings).
        control = frozenset(range(32)) - _layout_whitespace(self.limits.whitespace_pattern)
        tokens = list(enumerate(self.vocab.token_bytes[: self.limit]))
        self.banned = frozenset(i for i, b in tokens if b and _SURROGATE.search(b))
        self.json_banned = self.banned | {i for i, b in tokens if b and control & set(b)}
        self.after_ed = frozenset(i for i, b in tokens if b and 0xA0 <= b[0] <= 0xBF)
        self.keep, self.json_keep, self.after_ed_keep = (
            self._keep_row(ids) for ids in (self.banned, self.json_banned, self.after_ed)
        )

    def _keep_row(self, banned: frozenset[int]) -> torch.Tensor:
        """``[words]`` int32: every id below ``vocab_size`` but ``banned`` (xgrammar sets the
        bits past vocab_size in the last word)."""
        keep = np.zeros(self.words * 32, dtype=np.bool_)
        keep[: self.vocab_size] = True
        keep[list(banned)] = False
        return torch.from_numpy(np.packbits(keep, bitorder="little").view("<i4").copy())

    def json_options(self) -> dict[str, Any]:
        """``Grammar.from_json_schema`` keywords for the backend's whitespace pattern."""
        pattern, width = self.limits.whitespace_pattern, 0
        if pattern:
            try:
                width = _sre_parse.parse(pattern).getwidth()[1]
            except Exception:  # syntax only the engines know: count it as unbounded
                width = _UNBOUNDED
        if not width:
            return {"any_whitespace": False, "separators": (",", ":")}
        bound = width if width < _UNBOUNDED else None
        return {"any_whitespace": True, "max_whitespace_cnt": bound}

    def build(self, spec: GrammarSpec, policy: str | None = None) -> GrammarArtifact:
        check_spec(spec, self.limits)
        xgr = _xgrammar()
        unenforced: tuple[Unenforced, ...] = ()
        if spec.kind == "ebnf":
            try:
                parse = xgr.Grammar.from_ebnf if "::=" in spec.value else xgr.Grammar.from_lark
                grammar = parse(spec.value)
            except (RuntimeError, ValueError) as e:
                raise GrammarError(f"invalid ebnf grammar: {_message(e)}") from e
        elif spec.kind in ("json_schema", "json_object"):
            if spec.kind == "json_object":
                schema: Any = json_object_schema(self.limits.max_depth)
            else:
                schema, unenforced = self.enforceable_schema(
                    distribute(check_json_schema(spec.value)), self.policy_for(spec, policy)
                )
                schema = closed_objects(schema)
            text, options = json.dumps(schema), self.json_options()
            grammar = self._unsupported(
                spec, lambda: xgr.Grammar.from_json_schema(text, strict_mode=False, **options)
            )
        else:
            if spec.kind == "regex":
                regex = strip_anchors(spec.value)
                regex_cost(regex)  # GrammarError: invalid, lookaround, anchors inside
            elif spec.kind == "choices":
                regex = choices_regex(spec.value)
            else:
                regex = dtype_regex(spec.value)
            grammar = self._unsupported(spec, lambda: xgr.Grammar.from_regex(regex))
        compiled = self._unsupported(spec, lambda: self.compiler.compile_grammar(grammar))
        return GrammarArtifact(self.name, spec, XGrammarPayload(compiled, grammar), unenforced)

    def _unsupported(self, spec: GrammarSpec, step: Any) -> Any:
        """Run ``step``; an xgrammar error on a spec that passed our checks is a feature
        xgrammar lacks (``UnsupportedGrammarError``), so ``auto`` may try another backend."""
        try:
            return step()
        except (RuntimeError, ValueError, TypeError) as e:
            raise UnsupportedGrammarError(
                f"the {spec.kind} constraint cannot be compiled by the xgrammar engine: "
                f"{_message(e)}; simplify it, or ask the operator for another --grammar-backend"
            ) from e

    def load(self, artifact: GrammarArtifact) -> XGrammarGrammar:
        payload = artifact.payload
        compiled = payload.compiled
        if compiled is None:
            try:
                grammar = _xgrammar().Grammar.deserialize_json(payload.grammar)
                compiled = self.compiler.compile_grammar(grammar)
            except Exception as e:
                raise GrammarError(f"cannot load the grammar: {_message(e)}") from e
        return XGrammarGrammar(self, artifact, compiled)


def _layout_whitespace(pattern: str | None) -> set[int]:
    """The control characters (of tab, newline, carriage return) the JSON layout allows."""
    try:
        return {c for c in b"\t\n\r" if pattern and re.fullmatch(pattern, chr(c))}
    except re.error:  # syntax only the engines know: allow them all
        return set(b"\t\n\r")


def _message(error: Exception) -> str:
    """xgrammar's message without its ``[time] file.cc:line:`` prefix."""
    line = first_line(error)
    line = line.split(": ", 1)[1] if line.startswith("[") and ": " in line else line
    return line.rstrip(".")


class XGrammarGrammar(CompiledGrammar):
    """A compiled xgrammar grammar (immutable, shared by its matchers)."""

    def __init__(self, backend: XGrammarBackend, artifact: GrammarArtifact, compiled: Any) -> None:
        self.backend = backend
        self.spec = artifact.spec
        self.backend_name = artifact.backend
        self.unenforced = artifact.unenforced
        self.compiled = compiled
        is_json = self.spec.kind in ("json_schema", "json_object")
        self.keep = backend.json_keep if is_json else backend.keep  # AND-ed into every mask row
        self.banned = backend.json_banned if is_json else backend.banned

    def matcher(self) -> XGrammarMatcher:
        return XGrammarMatcher(self, _xgrammar().GrammarMatcher(self.compiled), [])


class XGrammarMatcher(GrammarMatcher):
    """One request's ``xgrammar.GrammarMatcher`` plus ``history``, every token accepted. EOS ids
    in it were accepted here and never passed to xgrammar; they only ever form its tail.
    ``_row`` caches the current state's mask (None: not computed since the last move)."""

    __slots__ = ("grammar", "xg", "history", "_row", "_terminated")

    def __init__(self, grammar: XGrammarGrammar, xg: Any, history: list[int]) -> None:
        self.grammar = grammar
        self.xg = xg
        self.history = history
        self._row: torch.Tensor | None = None
        self._terminated = False

    @property
    def _done(self) -> bool:
        return bool(self.history) and self.history[-1] in self.grammar.backend.eos_set

    def _mask(self) -> torch.Tensor:
        """The ``[words]`` mask row of the current state (computed once per state; never
        written in place afterwards, so copies may share it)."""
        if self._row is None:
            backend = self.grammar.backend
            if self._done:
                self._row, self._terminated = backend.eos_mask, True
                return self._row
            buf = torch.empty((1, backend.words), dtype=torch.int32)
            self.xg.fill_next_token_bitmask(buf, 0)
            row = buf[0]
            row &= self.grammar.keep
            if self._after_ed():
                row &= backend.after_ed_keep
            self._terminated = not bool((row & backend.not_eos).any())  # only EOS, or nothing
            self._row = backend.eos_mask if self._terminated else row
        return self._row

    def _after_ed(self) -> bool:
        """The output ends with byte 0xED (what follows must not spell a surrogate)."""
        last = self.grammar.backend.vocab.token_bytes[self.history[-1]] if self.history else None
        return last is not None and last[-1] == 0xED

    def fill_mask(self, mask: torch.Tensor, row: int) -> None:
        mask[row].copy_(self._mask())

    def advance(self, token_id: int) -> bool:
        token_id = int(token_id)
        backend = self.grammar.backend
        if token_id in backend.eos_set:
            if not self.is_final() and not self.is_terminated():
                return False
        elif self._done or not 0 <= token_id < backend.limit:
            return False
        elif backend.vocab.token_bytes[token_id] is None or token_id in self.grammar.banned:
            return False  # special (xgrammar would log it), or banned (see ``_setup``)
        elif token_id in backend.after_ed and self._after_ed():
            return False
        elif not self.xg.accept_token(token_id):  # a refused token leaves the state as it was
            return False
        self.history.append(token_id)
        self._row = None
        return True

    def is_terminated(self) -> bool:
        if self._done:
            return True
        self._mask()
        return self._terminated

    def is_final(self) -> bool:
        return self._done or self.xg.is_completed()

    def rollback(self, num_tokens: int) -> None:
        if not 0 <= num_tokens <= len(self.history):
            raise ValueError(f"cannot roll back {num_tokens} of {len(self.history)} tokens")
        if not num_tokens:
            return
        eos = self.grammar.backend.eos_set
        consumed = sum(t not in eos for t in self.history[-num_tokens:])
        del self.history[-num_tokens:]
        if consumed:
            self.xg.rollback(consumed)
        self._row = None

    def copy(self) -> XGrammarMatcher:
        twin = XGrammarMatcher(self.grammar, self.xg.fork(), list(self.history))
        twin._row, twin._terminated = self._row, self._terminated
        return twin

    def forced_bytes(self) -> bytes:
        if self.is_final() or self.is_terminated():
            return b""
        return self.xg.find_jump_forward_string().encode("utf-8")
