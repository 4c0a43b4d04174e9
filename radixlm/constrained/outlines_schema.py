"""What outlines-core 0.2.14 enforces of JSON Schema, for ``schema_exact`` (``OUTLINES_SUPPORT``).

The allowlist holds the keywords it translates exactly (each proven against ``jsonschema`` by
tests/unit/test_schema_exact.py); ``outlines_check`` reports the combinations of those keywords
it still mistranslates — a ``required`` name missing from ``properties`` (dropped), ``pattern``
next to ``minLength``/``maxLength`` (ignored), a subschema with no type (``{}``: an ungrouped
alternation that is not JSON), ``anyOf``/``$ref`` next to other keywords (one side ignored), the
array form of ``items``, recursive ``$ref`` (unrolled to a fixed depth), property names that
JSON must escape. Those schemas go to another backend (``auto``) or are refused.
"""

from __future__ import annotations

import json
from typing import Any

from radixlm.constrained.schema_exact import (
    ANNOTATIONS,
    ASSERTIONS,
    SchemaSupport,
    Unenforced,
    resolve_pointer,
)
from radixlm.errors import GrammarError

_DATA_KEYS = ("enum", "const", "default", "examples", "required")

# Keywords that tell outlines-core what a value is; a schema with none of them (``{}``,
# ``true``, ``{"minimum": 1}``) becomes an ungrouped alternation or an error there.
_TYPED = ("type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "properties", "items",
          "prefixItems")  # fmt: skip
# Keywords outlines-core translates without looking at their siblings.
_ALONE = ("anyOf", "$ref")


def outlines_check(node: Any, pointer: str, root: Any) -> list[Unenforced]:
    """What outlines-core 0.2.14 gets wrong in one subschema although each keyword is on its
    allowlist (``OUTLINES_SUPPORT``); see the module docstring of ``schema_exact``."""
    if pointer.endswith("/additionalProperties"):
        return []  # outlines-core closes objects (narrower) or takes the schema of the values
    if isinstance(node, bool) or not any(k in node for k in _TYPED):
        return [Unenforced(pointer, "{}", "a schema that allows any value", droppable=False)]
    found = []
    for key in _ALONE:
        others = set(node) - ANNOTATIONS - {key, "$defs", "definitions"}
        if key in node and others & ASSERTIONS:
            found.append(Unenforced(pointer, key, f"next to {sorted(others & ASSERTIONS)}"))
    required, props = node.get("required"), node.get("properties")
    if isinstance(required, list):
        missing = tuple(n for n in required if not isinstance(props, dict) or n not in props)
        if missing:
            found.append(
                Unenforced(pointer, "required", f"{list(missing)} not in properties", names=missing)
            )
    if "pattern" in node and ("minLength" in node or "maxLength" in node):
        found.append(Unenforced(pointer, "pattern", "next to minLength/maxLength"))
    if isinstance(node.get("items"), list):
        found.append(Unenforced(pointer, "items", "the array (tuple) form"))
    if isinstance(props, dict):
        escaped = [n for n in props if json.dumps(n, ensure_ascii=False)[1:-1] != n]
        if escaped:
            found.append(
                Unenforced(
                    pointer,
                    "properties",
                    f"names JSON must escape: {escaped[:3]}",
                    droppable=False,
                )
            )
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#") and _is_recursive(root, ref[1:]):
        found.append(
            Unenforced(pointer, "$ref", "a recursive definition (unrolled to a fixed depth)")
        )
    return found


def _is_recursive(root: Any, target: str) -> bool:
    """Whether the subschema at ``target`` refers back to itself through ``$ref``."""
    seen: set[str] = set()
    stack = [target]
    while stack:
        pointer = stack.pop()
        if pointer in seen:
            continue
        seen.add(pointer)
        try:
            node = resolve_pointer(root, pointer)
        except GrammarError:
            return False
        for ref in _refs(node):
            if ref == target:
                return True
            stack.append(ref)
    return False


def _refs(node: Any) -> list[str]:
    text = json.dumps(node)
    if '"$ref"' not in text:
        return []
    out = []
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            if isinstance(n.get("$ref"), str) and n["$ref"].startswith("#"):
                out.append(n["$ref"][1:])
            stack.extend(v for k, v in n.items() if k not in _DATA_KEYS)
        elif isinstance(n, list):
            stack.extend(n)
    return out


# What outlines-core enforces exactly (given ``outlines_check``), each proven against
# jsonschema by tests/unit/test_schema_exact.py. Its layout is narrower than JSON Schema in
# places that still validate: properties in schema order, objects closed, arrays without
# ``items`` of bounded depth, strings without U+007F..U+009F.
OUTLINES_SUPPORT = SchemaSupport(
    name="outlines",
    exact=frozenset(
        {"$ref", "type", "enum", "const", "properties", "required", "additionalProperties",
         "items", "prefixItems", "minItems", "maxItems", "anyOf", "minLength", "maxLength",
         "pattern", "format"}
    ),
    formats=frozenset({"date-time", "date", "time", "uuid", "email", "uri"}),
    check=outlines_check,
)  # fmt: skip
