"""Which JSON Schema keywords a grammar backend enforces exactly, decided from the schema alone.

Each backend declares a ``SchemaSupport``: an *allowlist* of the keywords it is verified to
translate exactly (tests/unit/test_schema_exact.py proves every entry against ``jsonschema``),
the ``format`` values it enforces, and checks for keyword combinations it mistranslates.
``find_unenforced`` walks a schema (following local ``$ref`` to where they point) and returns
every keyword outside the allowlist as an ``Unenforced`` with its JSON pointer. Keywords that
only annotate (``title``, ``description``, …) and names that are not JSON Schema keywords at all
(``x-order``) carry no assertion, so they are never reported.

Invariants:
- the decision depends on the schema and the backend only (never on timing or load);
- ``widen`` removes exactly the reported keywords, and removing a keyword of a JSON Schema only
  widens the set of valid instances (a schema is a conjunction of its keywords), so everything
  left is still enforced exactly; an ``Unenforced`` with ``droppable=False`` (a construct the
  backend would translate into something wrong, not merely wider) cannot be widened away;
- a schema that nests deeper than ``MAX_SCHEMA_DEPTH`` or whose ``$ref`` chain loops without
  consuming any JSON is a ``GrammarError`` (a 400), never a ``RecursionError`` or an empty 200.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from radixlm.errors import GrammarError

MAX_SCHEMA_DEPTH = 64  # nesting of subschemas; deeper schemas are refused with a 400
MAX_WIDEN_ROUNDS = 4

# Keywords that only annotate an instance: they never reject one.
ANNOTATIONS = frozenset(
    {
        "$schema", "$id", "id", "$anchor", "$dynamicAnchor", "$recursiveAnchor", "$comment",
        "$vocabulary", "title", "description", "default", "examples", "deprecated", "readOnly",
        "writeOnly", "contentEncoding", "contentMediaType", "contentSchema", "$defs",
        "definitions",
    }
)  # fmt: skip
# Every keyword that can reject an instance, drafts 4 to 2020-12.
ASSERTIONS = frozenset(
    {
        "$ref", "$dynamicRef", "$recursiveRef", "type", "enum", "const", "multipleOf",
        "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum", "maxLength", "minLength",
        "pattern", "format", "items", "prefixItems", "additionalItems", "maxItems", "minItems",
        "uniqueItems", "contains", "maxContains", "minContains", "properties",
        "patternProperties", "additionalProperties", "propertyNames", "maxProperties",
        "minProperties", "required", "dependentRequired", "dependentSchemas", "dependencies",
        "allOf", "anyOf", "oneOf", "not", "if", "then", "else", "unevaluatedItems",
        "unevaluatedProperties",
    }
)  # fmt: skip

# Keywords whose value is one subschema / a list of subschemas / a map of name → subschema.
_ONE = ("additionalProperties", "additionalItems", "items", "not", "if", "then", "else",
        "contains", "propertyNames", "unevaluatedItems", "unevaluatedProperties")  # fmt: skip
_LIST = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
_MAP = ("properties", "patternProperties", "dependentSchemas", "dependencies")


@dataclass(frozen=True)
class Unenforced:
    """One keyword a backend does not enforce: where it is and why."""

    pointer: str  # JSON pointer of the subschema that holds the keyword ("" = the root)
    keyword: str
    reason: str = ""  # e.g. "unknown format 'foo'"
    droppable: bool = True  # removing it only widens the schema (see the module docstring)
    names: tuple[str, ...] = ()  # for "required": the names to drop (not the whole keyword)

    def __str__(self) -> str:
        text = f"{self.pointer or '/'}: {self.keyword}"
        return f"{text} ({self.reason})" if self.reason else text

    def to_json(self) -> dict[str, str]:
        return {"pointer": self.pointer, "keyword": self.keyword, "reason": self.reason}


@dataclass(frozen=True)
class SchemaSupport:
    """What one backend enforces exactly. ``check(node, pointer, root)`` reports the
    combinations of allowlisted keywords the backend still gets wrong (or only partly right)."""

    name: str
    exact: frozenset[str]
    formats: frozenset[str]
    check: Callable[[Any, str, Any], list[Unenforced]] | None = field(default=None)


def pointer_join(pointer: str, *parts: object) -> str:
    """``pointer`` extended by ``parts``, escaped as RFC 6901 requires (``~`` → ``~0``, ``/`` →
    ``~1``)."""
    for part in parts:
        pointer += "/" + str(part).replace("~", "~0").replace("/", "~1")
    return pointer


def resolve_pointer(root: Any, pointer: str) -> Any:
    """The value at a JSON pointer inside ``root``; ``GrammarError`` if there is none."""
    node = root
    for raw in pointer.split("/")[1:] if pointer else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise GrammarError(
                f"json_schema $ref points at {pointer!r}, which does not exist"
            ) from e
    return node


def ref_target(ref: Any, where: str) -> str:
    """The JSON pointer of a local ``$ref`` (``#/...``); ``GrammarError`` for anything else."""
    if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
        raise GrammarError(
            f"json_schema at {where or '/'} has $ref {ref!r}; only local references (#/...) "
            "are supported: inline the referenced schema"
        )
    return ref[1:]


def subschemas(node: dict, pointer: str) -> Iterator[tuple[str, str, Any]]:
    """``(keyword, pointer, subschema)`` of each subschema directly inside ``node`` (not
    ``$defs``: those are reached through ``$ref``)."""
    for key, value in node.items():
        if key in _MAP and isinstance(value, dict):
            for name, sub in value.items():
                if isinstance(sub, (dict, bool)):  # array-form dependencies hold names
                    yield key, pointer_join(pointer, key, name), sub
        elif key in _LIST and isinstance(value, list):
            for i, sub in enumerate(value):
                yield key, pointer_join(pointer, key, i), sub
        elif key in _ONE and isinstance(value, (dict, bool)):
            yield key, pointer_join(pointer, key), value


def find_unenforced(schema: Any, support: SchemaSupport) -> list[Unenforced]:
    """Every keyword of ``schema`` that ``support``'s backend does not enforce exactly, in
    document order; ``GrammarError`` for a schema too deep or with a ``$ref`` loop. Subschemas of
    an unenforced keyword are not visited (dropping the keyword drops them)."""
    found: list[Unenforced] = []
    visited: set[str] = set()

    def visit(node: Any, pointer: str, depth: int, refs: tuple[str, ...]) -> None:
        if depth > MAX_SCHEMA_DEPTH:
            raise GrammarError(
                f"json_schema nests deeper than {MAX_SCHEMA_DEPTH} levels (at {pointer}); "
                "flatten it or use $ref to shared definitions"
            )
        if support.check is not None:
            found.extend(support.check(node, pointer, schema))
        if not isinstance(node, dict):
            return
        skipped = set()
        for key, value in node.items():
            if key in ANNOTATIONS or key not in ASSERTIONS:
                continue
            if key not in support.exact:
                found.append(Unenforced(pointer, key))
                skipped.add(key)
            elif key == "format" and value not in support.formats:
                found.append(Unenforced(pointer, key, f"unknown format {value!r}"))
        if "$ref" in node and "$ref" not in skipped:
            target = ref_target(node["$ref"], pointer)
            if target in refs:  # came back without consuming JSON: no instance can end
                raise GrammarError(
                    "json_schema has a $ref cycle with no base case "
                    f"({' -> '.join('#' + r for r in (*refs, target))}); no JSON value "
                    "satisfies it"
                )
            if target not in visited:
                visited.add(target)
                visit(resolve_pointer(schema, target), target, depth + 1, (*refs, target))
        for key, where, sub in subschemas(node, pointer):
            if key not in skipped:
                # Applicators on the same instance keep the ref chain (no JSON consumed).
                same = key in ("allOf", "anyOf", "oneOf", "not", "if", "then", "else")
                visit(sub, where, depth + 1, refs if same else ())

    visited.add("")
    visit(schema, "", 0, ("",))
    return found


def widen(schema: Any, unenforced: list[Unenforced]) -> Any:
    """A copy of ``schema`` without the ``unenforced`` keywords (``oneOf`` becomes ``anyOf``;
    for ``required`` only the listed ``names`` go). Every item must be droppable."""
    out = copy.deepcopy(schema)
    for item in unenforced:
        assert item.droppable, item
        try:
            node = resolve_pointer(out, item.pointer)
        except GrammarError:
            continue  # inside a keyword dropped before it
        if not isinstance(node, dict) or item.keyword not in node:
            continue  # already dropped with an enclosing keyword
        if item.keyword == "oneOf" and "anyOf" not in node:
            node["anyOf"] = node.pop("oneOf")
        elif item.keyword == "required" and item.names:
            node["required"] = [n for n in node["required"] if n not in item.names]
        else:
            del node[item.keyword]
    return out


def describe(unenforced: list[Unenforced], limit: int = 8) -> str:
    """A one-line list for error messages and logs."""
    more = f" (and {len(unenforced) - limit} more)" if len(unenforced) > limit else ""
    return "; ".join(map(str, unenforced[:limit])) + more


def enforceable(
    schema: Any, support: SchemaSupport, policy: str
) -> tuple[Any, tuple[Unenforced, ...]]:
    """``schema`` in a form ``support``'s backend enforces exactly, and what it does not
    enforce: nothing under "exact" (else ``UnsupportedGrammarError``) and "reject" (else a
    ``GrammarError`` naming each keyword and its JSON pointer); under "ignore" the droppable
    keywords are removed (``widen``) and returned.

    The schema is first rewritten into equivalent forms (``schema_rewrite.normalize``).
    """
    from radixlm.constrained.base import UnsupportedGrammarError
    from radixlm.constrained.schema_rewrite import normalize

    try:
        normalized = normalize(schema)
        missing = find_unenforced(normalized, support)
    except RecursionError as e:
        raise GrammarError(
            f"json_schema nests too deeply to be read; keep it within {MAX_SCHEMA_DEPTH} levels"
        ) from e
    if not missing:
        return normalized, ()
    stuck = [u for u in missing if not u.droppable]
    if policy == "exact" or stuck:
        raise UnsupportedGrammarError(
            f"the {support.name} grammar backend cannot enforce these json_schema keywords "
            f"exactly: {describe(stuck or missing)}"
        )
    if policy == "reject":
        raise GrammarError(
            "json_schema uses keywords this server cannot enforce while decoding: "
            f'{describe(missing)}. Remove them; without strict mode (OpenAI "strict": true) '
            "and unless the server runs with --json-schema-unenforced reject, such a schema is "
            "decoded best-effort and the response names the keywords it did not enforce"
        )
    # Dropping a keyword can expose keywords it hid (a ``oneOf`` that becomes an ``anyOf`` is
    # visited): widen until nothing is left, a few rounds at most.
    dropped, widened = list(missing), normalized
    for _ in range(MAX_WIDEN_ROUNDS):
        widened = widen(widened, missing)
        missing = find_unenforced(widened, support)
        stuck = [u for u in missing if not u.droppable]
        if not missing:
            return widened, tuple(dropped)
        if stuck:
            break
        dropped += missing
    raise UnsupportedGrammarError(
        f"the {support.name} grammar backend cannot enforce these json_schema keywords "
        f"exactly: {describe(stuck or missing)}"
    )
