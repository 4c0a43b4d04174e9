"""What xgrammar 0.2.9 enforces of JSON Schema, for ``schema_exact`` (``XGRAMMAR_SUPPORT``).

``EXACT_KEYWORDS`` and ``FORMATS`` are proven against ``jsonschema`` by
tests/unit/test_constrained_xgrammar.py; ``IGNORED_KEYWORDS`` are those xgrammar drops or loosens
silently; ``xgrammar_check`` reports the combinations of allowlisted keywords it gets wrong, and
``distribute`` rewrites the siblings of ``anyOf``/``oneOf`` into every branch (an equivalent
schema, which xgrammar then reads whole: it ignores those siblings otherwise).
"""

from __future__ import annotations

from typing import Any

from radixlm.constrained.schema_exact import ANNOTATIONS, ASSERTIONS, SchemaSupport, Unenforced

EXACT_KEYWORDS: frozenset[str] = frozenset(
    {
        "$ref", "type", "enum", "const", "properties", "required", "additionalProperties",
        "maxProperties", "propertyNames", "items", "prefixItems", "minItems", "maxItems", "anyOf",
        "minLength", "maxLength", "pattern", "format", "minimum", "maximum", "exclusiveMinimum",
        "exclusiveMaximum", "multipleOf",
    }
)  # fmt: skip
FORMATS: frozenset[str] = frozenset({"uuid", "ipv6", "email"})
# Keywords xgrammar drops or loosens silently (it accepts instances they forbid): ``oneOf`` is an
# ``anyOf``, ``allOf`` keeps one side, ``minProperties`` counts duplicate keys.
IGNORED_KEYWORDS: frozenset[str] = frozenset(
    {
        "allOf", "oneOf", "not", "if", "then", "else", "uniqueItems", "contains", "minContains",
        "maxContains", "dependentRequired", "dependentSchemas", "dependencies",
        "unevaluatedProperties", "minProperties",
    }
)  # fmt: skip
_SCALAR = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
           "minLength", "maxLength", "pattern", "format")  # fmt: skip
_LOOKAROUND = ("(?=", "(?!", "(?<=", "(?<!")
_MAPS = ("properties", "patternProperties", "dependentSchemas", "dependencies", "$defs",
         "definitions")  # fmt: skip
_DATA = ("enum", "const", "default", "examples", "required")


def _drops(node: Any, key: str) -> bool:
    """Whether xgrammar ignores ``node[key]`` as a whole (so its subschemas need no report)."""
    if key == "items":
        return isinstance(node.get("items"), list)  # the tuple form: xgrammar refuses it
    others = (set(node) - ANNOTATIONS - {key}) & ASSERTIONS  # read alone, siblings ignored
    return key in ("anyOf", "$ref") and key in node and bool(others)


def xgrammar_check(node: Any, pointer: str, root: Any) -> list[Unenforced]:
    """What xgrammar 0.2.9 gets wrong in one subschema although each keyword is allowlisted."""
    if not isinstance(node, dict):
        return []
    parent = root
    for part in pointer.split("/")[1:]:  # inside a keyword reported as a whole: nothing to add
        key = part.replace("~1", "/").replace("~0", "~")
        if isinstance(parent, dict) and key in ("anyOf", "items") and _drops(parent, key):
            return []
        parent = parent[int(key)] if isinstance(parent, list) else parent.get(key, {})
    found = []
    for key in ("anyOf", "$ref", "items"):
        if _drops(node, key):
            reason = "the array (tuple) form" if key == "items" else "next to other keywords"
            found.append(Unenforced(pointer, key, reason))
    types = node.get("type")
    types = set(types) if isinstance(types, list) else {types} if isinstance(types, str) else set()
    if not types and not pointer.endswith("/propertyNames"):  # property names are strings
        found += [Unenforced(pointer, k, "without a type") for k in _SCALAR if k in node]
    if "multipleOf" in node and "number" in types:
        found.append(Unenforced(pointer, "multipleOf", "on a number (only integers)"))
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if isinstance(node.get(key), bool):
            found.append(Unenforced(pointer, key, "the draft-4 boolean form"))
    required, props = node.get("required"), node.get("properties")
    if isinstance(required, list):
        missing = tuple(n for n in required if not isinstance(props, dict) or n not in props)
        if missing:
            reason = f"{list(missing)} not in properties"
            found.append(Unenforced(pointer, "required", reason, names=missing))
    pattern = node.get("pattern")
    if isinstance(pattern, str) and any(s in pattern for s in _LOOKAROUND):
        found.append(Unenforced(pointer, "pattern", "a lookaround (dropped by xgrammar)"))
    elif pattern is not None and ("minLength" in node or "maxLength" in node):
        found.append(Unenforced(pointer, "pattern", "next to minLength/maxLength"))
    return found


def _map(node: Any, visit: Any) -> Any:
    """``node`` with ``visit`` applied to each subschema (data and names left alone)."""
    if isinstance(node, list):
        return [visit(x) for x in node]
    if not isinstance(node, dict):
        return node
    return {
        k: v if k in _DATA else
        {n: visit(s) for n, s in v.items()} if k in _MAPS and isinstance(v, dict) else
        visit(v)
        for k, v in node.items()
    }  # fmt: skip


def _merge(siblings: dict, branch: Any) -> dict | None:
    """``siblings`` and ``branch`` as one subschema (their conjunction), or None when that
    takes more than a union of keywords."""
    if branch is True:
        return dict(siblings)
    if not isinstance(branch, dict) or "$ref" in branch or "anyOf" in branch or "oneOf" in branch:
        return None
    out, opening = dict(siblings), {"additionalProperties", "patternProperties"}
    for side, other in ((siblings, branch), (branch, siblings)):
        if "properties" in side and opening & other.keys():
            return None  # which properties are "additional" would change
    for key, value in branch.items():
        if key not in out or out[key] == value:
            out[key] = value
        elif key == "required" and isinstance(value, list):
            out[key] = list(dict.fromkeys([*out[key], *value]))
        elif key == "properties" and not value.keys() & out[key].keys():
            out[key] = {**out[key], **value}
        else:
            return None
    return out


def distribute(node: Any) -> Any:
    """An equivalent schema in which ``anyOf``/``oneOf`` carry their sibling keywords into each
    branch (``{"type": "object", "anyOf": [{"required": ["a"]}, ...]}``: xgrammar reads an
    ``anyOf`` alone), where a union of keywords expresses each conjunction."""
    node = _map(node, distribute)
    if not isinstance(node, dict):
        return node
    combinators = node.keys() & {"anyOf", "oneOf", "$ref"}
    if len(combinators) != 1 or "$ref" in combinators:
        return node
    key = combinators.pop()
    siblings = {k: v for k, v in node.items() if k in ASSERTIONS and k != key}
    if not siblings or not isinstance(node[key], list):
        return node
    merged = [_merge(siblings, b) for b in node[key] if b is not False]
    if merged and all(m is not None for m in merged):
        return {**{k: v for k, v in node.items() if k not in siblings}, key: merged}
    return node


XGRAMMAR_SUPPORT = SchemaSupport("xgrammar", EXACT_KEYWORDS, FORMATS, xgrammar_check)
