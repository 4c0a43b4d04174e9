"""Grammar specs → one regular expression that the whole output must match (fullmatch).

Kinds (``base.KINDS`` but ``ebnf``): ``regex`` (checked, ``^``/``$`` at the ends of each
top-level branch dropped), ``json_schema``
(outlines-core's converter), ``json_object`` (any JSON object, nesting bounded by
``max_depth``), ``choices`` (a JSON list of strings, matched literally) and ``dtype`` (the
SGLang frontend's ``gen(dtype=...)`` patterns).

Invariants: every function here either returns a regex that Python's ``re`` accepts and whose
estimated expansion is within the limits, or raises ``GrammarError`` naming the problem and how
to fix it — ``UnsupportedGrammarError`` when the spec is valid but beyond the outlines
conversion or over a size limit (``--grammar-backend auto`` then tries llguidance). Nothing
here touches a vocabulary; see ``regex_cost`` for the size estimate the backend checks against
its vocabulary.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import warnings
from dataclasses import dataclass
from typing import Any

from outlines_core.json_schema import (
    BOOLEAN,
    NULL,
    NUMBER,
    STRING,
    build_regex_from_schema,
)

from radixlm.constrained.base import KINDS, GrammarSpec, SpecLimits, UnsupportedGrammarError
from radixlm.constrained.outlines_schema import OUTLINES_SUPPORT
from radixlm.constrained.schema_exact import MAX_SCHEMA_DEPTH, Unenforced, enforceable
from radixlm.constrained.schema_support import (
    isolate_container_literals,
    literal_regex,
    placeholder_regex,
    strip_anchors,
    with_json_safe_patterns,
)
from radixlm.errors import GrammarError

logger = logging.getLogger(__name__)

# NOTE: ``re._parser`` is CPython's private regex parser; it is the only way to walk a pattern's
# structure (repeat counts, anchors, lookarounds) without writing a parser of our own.
try:
    import re._constants as _sre_constants  # type: ignore[import-not-found]
    import re._parser as _sre_parse  # type: ignore[import-not-found]
except ImportError:  # Python < 3.11
    import sre_constants as _sre_constants  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]

DTYPE_REGEXES = {
    "int": r"[-+]?[0-9]+[ \n]*",
    "float": r"[-+]?[0-9]*\.?[0-9]+[ \n]*",
    "bool": r"(True|False)",
    "str": r'"[\w\d\s]*"',
}

# Characters the Rust regex engine (outlines-core) treats as meta; escaping exactly these keeps
# a literal valid in both Rust and Python syntax (Rust rejects some escapes Python emits).
_RUST_META = frozenset("\\.+*?()|[]{}^$#&-~")
# Syntax the Rust engine accepts but Python's parser does not, with a Python stand-in of about
# the same cost (used only to estimate the size; the engine compiles the original).
_RUST_ONLY_SYNTAX = [
    (re.compile(r"\\[pP](\{[^}]*\}|[A-Za-z])"), "."),  # Unicode classes: \p{Greek}, \pL
    (re.compile(r"\\z"), r"\\Z"),  # end of text
    (re.compile(r"\(\?<(?=[A-Za-z_])"), "(?P<"),  # named groups
]
# A class that allows more than this many characters counts as "wide" (see ``regex_cost``).
_WIDE_CLASS = 16


@dataclass(frozen=True)
class RegexCost:
    """Size of a regex with counted repeats unrolled: ``atoms`` in all, ``wide`` of them classes
    that match many characters (each such position allows most of a vocabulary)."""

    atoms: int
    wide: int


def spec_to_regex(
    spec: GrammarSpec, limits: SpecLimits | None = None, policy: str | None = None
) -> tuple[str, tuple[Unenforced, ...]]:
    """The regex the whole output must match for ``spec``, and the JSON Schema keywords it does
    not enforce (``policy``: see ``schema_exact.enforceable``; default the limits' own);
    ``GrammarError`` if the spec is invalid."""
    limits = limits or SpecLimits()
    policy = policy or limits.unenforced
    unenforced: tuple[Unenforced, ...] = ()
    if spec.kind == "ebnf":
        raise UnsupportedGrammarError(
            "ebnf grammars are not supported by the outlines grammar backend; start the server "
            "with --grammar-backend llguidance or auto (pip install llguidance), or express the "
            "constraint as a regex or a JSON schema"
        )
    check_spec(spec, limits)
    if spec.kind == "regex":
        regex = strip_anchors(spec.value)
    elif spec.kind == "json_schema":
        regex, unenforced = json_schema_regex(spec.value, limits.whitespace_pattern, policy)
    elif spec.kind == "json_object":
        regex = json_object_regex(limits.max_depth, limits.whitespace_pattern)
    elif spec.kind == "choices":
        regex = choices_regex(spec.value)
    else:
        regex = dtype_regex(spec.value)
    if len(regex) > limits.max_regex_chars:
        raise UnsupportedGrammarError(
            f"the {spec.kind} constraint becomes a regex of {len(regex)} characters, more than the "
            f"limit of {limits.max_regex_chars}; simplify it (fewer properties, enums or bounds)"
        )
    try:
        cost = regex_cost(regex, what=f"the {spec.kind} constraint")
    except UnsupportedGrammarError:
        raise
    except GrammarError as e:
        if spec.kind != "json_schema":
            raise
        # The schema was valid: its regex is what the outlines conversion cannot express.
        raise UnsupportedGrammarError(str(e)) from e
    if cost.atoms > limits.max_regex_expansion:
        raise UnsupportedGrammarError(
            f"the {spec.kind} constraint unrolls to about {cost.atoms} regex atoms, more than the "
            f"limit of {limits.max_regex_expansion}; lower its repeat counts ({{m,n}}, maxLength, "
            "maxItems)"
        )
    if limits.max_wide_positions is not None and cost.wide > limits.max_wide_positions:
        raise UnsupportedGrammarError(
            f"the {spec.kind} constraint allows free text at about {cost.wide} positions after "
            f"unrolling its bounds, more than the limit of {limits.max_wide_positions} for this "
            "model's vocabulary (the FSM would be too large); lower maxLength/maxItems or the "
            "regex repeat counts"
        )
    return regex, unenforced


def check_spec(spec: GrammarSpec, limits: SpecLimits) -> None:
    """``GrammarError`` for an unknown kind or a spec over the operator's size limit (checked by
    every backend)."""
    if spec.kind not in KINDS:
        raise GrammarError(f"unknown grammar kind {spec.kind!r}; expected one of {list(KINDS)}")
    if len(spec.value) > limits.max_spec_chars:
        raise GrammarError(
            f"the {spec.kind} constraint has {len(spec.value)} characters, more than the limit "
            f"of {limits.max_spec_chars}; send a smaller one"
        )


def dtype_regex(dtype: str) -> str:
    """The regex of a ``dtype`` spec's value; ``GrammarError`` for an unknown one."""
    if dtype not in DTYPE_REGEXES:
        raise GrammarError(f"unknown dtype {dtype!r}; expected one of {list(DTYPE_REGEXES)}")
    return DTYPE_REGEXES[dtype]


def first_line(error: object) -> str:
    """The first line of an engine's error message (they can run to pages)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else "unknown error"


def check_json_schema(schema: str) -> dict:
    """The parsed schema; ``GrammarError`` unless it is a JSON object and a valid JSON Schema."""
    try:
        parsed = json.loads(schema)
    except json.JSONDecodeError as e:
        raise GrammarError(f"json_schema is not valid JSON: {e}") from e
    except RecursionError as e:
        raise GrammarError(_too_deep()) from e
    if not isinstance(parsed, dict):
        raise GrammarError(
            f"json_schema must be a JSON object (a schema), not {type(parsed).__name__}; "
            'for example {"type": "object", "properties": {...}}'
        )
    if _nesting(parsed) > 2 * MAX_SCHEMA_DEPTH:  # JSON levels: a subschema is one or two deep
        raise GrammarError(_too_deep())
    _check_schema(parsed)
    return parsed


def _too_deep() -> str:
    return (
        f"json_schema nests deeper than {MAX_SCHEMA_DEPTH} levels of subschemas; flatten it or "
        "use $ref to shared definitions"
    )


def _nesting(value: object) -> int:
    """Depth of nested JSON containers, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend(
                (v, depth + 1) for v in (node.values() if isinstance(node, dict) else node)
            )
    return deepest


def json_schema_regex(
    schema: str, whitespace_pattern: str | None = None, policy: str = "ignore"
) -> tuple[str, tuple[Unenforced, ...]]:
    """The regex of a JSON schema and the keywords it leaves unenforced (``policy``)."""
    parsed, unenforced = enforceable(check_json_schema(schema), OUTLINES_SUPPORT, policy)
    rewritten, literals = isolate_container_literals(with_json_safe_patterns(parsed))
    ws = whitespace_pattern if whitespace_pattern is not None else ""
    try:
        regex = build_regex_from_schema(json.dumps(rewritten), ws)
    except ValueError as e:
        raise UnsupportedGrammarError(
            f"unsupported json_schema: {first_line(e)}; supported: type, properties, required, "
            "items, enum, const, anyOf/oneOf/allOf, $ref to local $defs, string "
            "minLength/maxLength/pattern/format, array minItems/maxItems"
        ) from e
    for i, values in enumerate(literals):
        if not values:
            raise GrammarError(
                "json_schema has a const/enum none of whose values satisfies the keywords "
                "next to it; no output can validate"
            )
        alternatives = "|".join(literal_regex(v, ws, escape_literal) for v in values)
        placeholder = placeholder_regex(i)
        if placeholder not in regex:  # the converter rendered the placeholder unexpectedly
            raise UnsupportedGrammarError(
                "json_schema has a const/enum with objects or arrays in a place the outlines "
                "converter cannot take; ask the operator for --grammar-backend auto"
            )
        regex = regex.replace(placeholder, f"(?:{alternatives})")
    return regex, unenforced


def _check_schema(schema: dict) -> None:
    """Validate ``schema`` against its JSON Schema meta-schema (a clear message for typos), as
    ``check_schema`` does, with one meta-schema validator per draft (building it dominated the
    compile of a small schema)."""
    import jsonschema

    error = next(
        _meta_validator(jsonschema.validators.validator_for(schema)).iter_errors(schema), None
    )
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise GrammarError(f"json_schema is not a valid JSON Schema at {where}: {error.message}")


@functools.lru_cache(maxsize=16)
def _meta_validator(cls: Any) -> Any:
    import jsonschema

    meta = jsonschema.validators.validator_for(cls.META_SCHEMA, default=cls)
    return meta(cls.META_SCHEMA, format_checker=meta.FORMAT_CHECKER)


def json_object_regex(max_depth: int = 3, whitespace_pattern: str | None = None) -> str:
    """Any JSON object whose objects/arrays nest at most ``max_depth`` levels (the top object is
    level 1). The recursion is unrolled: level ``k`` values may be containers of level ``k+1``."""
    if not 1 <= max_depth <= 8:
        raise GrammarError(f"json_object max_depth must be in [1, 8], got {max_depth}")
    ws = whitespace_pattern if whitespace_pattern is not None else ""
    scalar = f"(?:{STRING}|{NUMBER}|{BOOLEAN}|{NULL})"

    def container(level: int, obj: bool) -> str:
        # One level deeper may still hold containers, until max_depth is reached.
        inner = scalar
        if level < max_depth:
            inner = f"(?:{scalar}|{container(level + 1, True)}|{container(level + 1, False)})"
        if obj:
            item = f"{STRING}{ws}:{ws}{inner}"
            return rf"\{{{ws}(?:{item}(?:{ws},{ws}{item})*)?{ws}\}}"
        return rf"\[{ws}(?:{inner}(?:{ws},{ws}{inner})*)?{ws}\]"

    return container(1, True)


def choices_regex(value: str) -> str:
    """An alternation of the literal strings of a JSON list."""
    try:
        choices = json.loads(value)
    except json.JSONDecodeError as e:
        raise GrammarError(f"choices must be a JSON list of strings: {e}") from e
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
        raise GrammarError('choices must be a non-empty JSON list of strings, e.g. ["yes", "no"]')
    return "(?:" + "|".join(escape_literal(c) for c in choices) + ")"


def escape_literal(text: str) -> str:
    """``text`` as a regex that matches exactly it, in both Rust and Python syntax."""
    return "".join("\\" + c if c in _RUST_META else c for c in text)


def regex_cost(regex: str, what: str = "the regex") -> RegexCost:
    """Parse ``regex`` (``GrammarError`` if invalid or unsupported) and estimate its size.

    NOTE: syntax that only the Rust engine knows (``\\p{L}``, ``[[:alpha:]]``) cannot be parsed
    here; such a regex is left to the engine and costed by its length.
    """
    try:
        return _cost(_parse(regex), what, regex)
    except re.error as e:
        error = e
    except RecursionError as e:
        raise UnsupportedGrammarError(f"{what} nests too deeply; simplify it") from e
    stand_in = regex
    for pattern, replacement in _RUST_ONLY_SYNTAX:
        stand_in = pattern.sub(replacement, stand_in)
    if stand_in != regex:
        try:
            return _cost(_parse(stand_in), what, regex)
        except (re.error, RecursionError):
            return RegexCost(atoms=len(regex), wide=len(regex))  # unknown: assume the worst
    raise GrammarError(f"{what} is not a valid regex: {error} (regex: {_clip(regex)})") from error


def _parse(regex: str) -> list:
    with warnings.catch_warnings():  # e.g. "possible nested set" for Rust's [[:alpha:]]
        warnings.simplefilter("ignore")
        return list(_sre_parse.parse(regex))


def _cost(items: list, what: str, regex: str) -> RegexCost:
    c = _sre_constants
    atoms = wide = 0
    for op, av in items:
        if op in (c.MAX_REPEAT, c.MIN_REPEAT) or op == getattr(c, "POSSESSIVE_REPEAT", None):
            lo, hi, sub = av
            inner = _cost(list(sub), what, regex)
            times = max(1, lo + 1 if hi == c.MAXREPEAT else hi)
            atoms, wide = atoms + inner.atoms * times, wide + inner.wide * times
        elif op == c.SUBPATTERN or op == getattr(c, "ATOMIC_GROUP", None):
            inner = _cost(list(av[-1] if op == c.SUBPATTERN else av), what, regex)
            atoms, wide = atoms + inner.atoms, wide + inner.wide
        elif op == c.BRANCH:
            for sub in av[1]:
                inner = _cost(list(sub), what, regex)
                atoms, wide = atoms + inner.atoms, wide + inner.wide
        elif op in (c.ASSERT, c.ASSERT_NOT, c.GROUPREF, c.GROUPREF_EXISTS):
            raise GrammarError(
                f"{what} uses lookaround or backreferences, which a finite-state grammar cannot "
                f"express; rewrite it without them (regex: {_clip(regex)})"
            )
        elif op == c.AT:
            raise GrammarError(
                f"{what} uses an anchor or boundary ({str(av).lower()}) inside the pattern; "
                "the whole output is always matched, so remove it "
                f"(regex: {_clip(regex)})"
            )
        else:
            atoms += 1
            wide += _is_wide(op, av)
    return RegexCost(atoms, wide)


def _is_wide(op: object, av: object) -> bool:
    c = _sre_constants
    if op in (c.ANY, c.NOT_LITERAL, c.CATEGORY):
        return True
    if op != c.IN:
        return False
    width = 0
    for kind, arg in av:  # type: ignore[attr-defined]
        if kind in (c.NEGATE, c.CATEGORY):
            return True
        width += arg[1] - arg[0] + 1 if isinstance(arg, tuple) else 1  # a range or one char
    return width > _WIDE_CLASS


def _clip(text: str, limit: int = 200) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "…"
