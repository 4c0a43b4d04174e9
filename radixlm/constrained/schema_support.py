"""The rewrites outlines-core's JSON Schema → regex conversion needs (what it enforces exactly:
``outlines_schema.py``).

It rewrites what outlines-core converts wrongly, so that every output still validates:
``const``/``enum`` values holding objects or arrays (their keys would be spliced into the regex
unescaped: ``{"a.b": 1}`` also matched ``{"aXb": 1}``, a quote in a key made invalid JSON)
become placeholders that ``specs.py`` replaces by regexes of its own
(``isolate_container_literals``, ``literal_regex``); ``pattern`` anchors are stripped per
top-level branch (``^a$|^b$``) and a pattern with top-level branches is grouped (``a|b`` was
spliced as ``"a|b"``). For llguidance, ``closed_objects`` gives objects outlines-core's default
of no extra properties.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

# Keys whose values are maps of names → subschemas (not keywords themselves).
_SCHEMA_MAPS = ("properties", "$defs", "definitions")
# Keys whose values are data (instances, names), never subschemas.
_DATA_KEYS = ("enum", "const", "default", "examples", "required")
# Raw characters a JSON string may not contain unescaped (RFC 8259 §7), plus the quote.
_JSON_FORBIDDEN = r'"\\\x00-\x1f\x7f'
_OUTSIDE_CLASS = {
    ".": f"[^{_JSON_FORBIDDEN}]",
    r"\s": "[ ]",
    r"\S": f"[^ {_JSON_FORBIDDEN}]",
    r"\W": rf"[^\w{_JSON_FORBIDDEN}]",
    r"\D": f"[^0-9{_JSON_FORBIDDEN}]",
}


def json_safe_pattern(pattern: str) -> str:
    """Narrow a schema ``pattern`` so that its matches are valid *raw* JSON string contents.

    NOTE: outlines-core splices ``pattern`` between the quotes of the JSON string as is, so
    ``.`` or ``\\s`` would let the model emit a raw newline or control character — text that
    no JSON parser accepts. Every match of the narrowed pattern is still a match of the
    original (characters that would need escaping are simply never produced): ``.`` and the
    negated shorthands exclude them, ``\\s`` becomes a space, and negated classes exclude them.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = negated = False
    while i < n:
        c = pattern[i]
        two = pattern[i : i + 2]
        if c == "\\" and i + 1 < n:
            if not in_class and two in _OUTSIDE_CLASS:
                out.append(_OUTSIDE_CLASS[two])
            elif in_class and two == r"\s":
                out.append(" ")
            else:
                out.append(two)
            i += 2
            continue
        if in_class:
            if c == "]" and not (out and out[-1] in ("[", "[^")):
                if negated:
                    out.append(_JSON_FORBIDDEN)
                in_class = False
            out.append(c)
        elif c == "[":
            in_class = True
            negated = pattern.startswith("[^", i)
            out.append("[^" if negated else "[")
            i += 2 if negated else 1
            continue
        elif c == ".":
            out.append(_OUTSIDE_CLASS["."])
        else:
            out.append(c)
        i += 1
    return "".join(out)


def with_json_safe_patterns(schema: Any) -> Any:
    """A copy of ``schema`` with every string ``pattern`` rewritten by ``pattern_for_outlines``."""
    if isinstance(schema, list):
        return [with_json_safe_patterns(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = _map_subschemas(schema, with_json_safe_patterns)
    if isinstance(out.get("pattern"), str):
        out["pattern"] = pattern_for_outlines(out["pattern"])
    return out


def _map_subschemas(node: dict, visit: Callable[[Any], Any]) -> dict:
    """A copy of ``node`` with ``visit`` applied to every value that may hold subschemas: each
    entry of a name → schema map, each other keyword's value; data keywords are kept as is."""
    out = {}
    for key, value in node.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: visit(sub) for name, sub in value.items()}
        elif key in _DATA_KEYS:
            out[key] = value
        else:
            out[key] = visit(value)
    return out


def pattern_for_outlines(pattern: str) -> str:
    """A schema ``pattern`` as outlines-core must receive it: anchors stripped per branch,
    narrowed by ``json_safe_pattern``, and grouped when it has top-level branches.

    NOTE: outlines-core splices the pattern between the quotes ungrouped, so ``a|b`` became
    ``"a|b"``, which also matched the unterminated ``"a``.
    """
    narrowed = json_safe_pattern(strip_anchors(pattern))
    return f"(?:{narrowed})" if len(top_level_branches(narrowed)) > 1 else narrowed


# ---- anchors ------------------------------------------------------------------------------------


def strip_anchors(regex: str) -> str:
    """Drop a leading ``^``/``\\A`` and a trailing unescaped ``$``/``\\z`` of every top-level
    branch: the output is always matched as a whole, so they are redundant (``^a$|^b$`` ->
    ``a|b``), and the backends append to the regex."""
    return "|".join(_strip_branch(b) for b in top_level_branches(regex))


def _strip_branch(regex: str) -> str:
    for head in ("^", "\\A"):
        if regex.startswith(head):
            regex = regex[len(head) :]
    for tail in ("$", "\\z"):
        body = regex[: -len(tail)]
        backslashes = len(body) - len(body.rstrip("\\"))
        if regex.endswith(tail) and backslashes % 2 == 0:
            regex = body
    return regex


def top_level_branches(regex: str) -> list[str]:
    """``regex`` split at every ``|`` outside groups and character classes."""
    branches, start, depth, i, n = [], 0, 0, 0, len(regex)
    while i < n:
        c = regex[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":  # skip the class; a ``]`` right after ``[`` or ``[^`` is a literal
            i += 2 if regex.startswith("[^", i) else 1
            i += regex.startswith("]", i)
            while i < n and regex[i] != "]":
                i += 2 if regex[i] == "\\" else 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            branches.append(regex[start:i])
            start = i + 1
        i += 1
    return [*branches, regex[start:]]


# ---- const / enum values with objects or arrays -------------------------------------------------

_PLACEHOLDER = "\ue000radixlm{}\ue001"  # private-use code points: never in a real schema


def placeholder_regex(index: int) -> str:
    """What outlines-core makes of the string const that stands for literal list ``index``."""
    return f'"{_PLACEHOLDER.format(index)}"'


def isolate_container_literals(schema: Any) -> tuple[Any, list[list[Any]]]:
    """A copy of ``schema`` in which every subschema whose ``const``/``enum`` holds an object or
    array is replaced by ``{"const": <placeholder i>}``, and the value lists (entry ``i``: the
    values subschema ``i`` allows). Values that fail the subschema's other keywords are
    dropped (outlines would ignore those keywords), unless they use ``$ref``."""
    found: list[list[Any]] = []

    def visit(node: Any) -> Any:
        if isinstance(node, list):
            return [visit(x) for x in node]
        if not isinstance(node, dict):
            return node
        values = _literal_values(node)
        if values is not None and any(isinstance(v, (dict, list)) for v in values):
            found.append(_filter_by_siblings(node, values))
            return {"const": _PLACEHOLDER.format(len(found) - 1)}
        return _map_subschemas(node, visit)

    return visit(schema), found


def _literal_values(node: dict) -> list[Any] | None:
    if "const" in node:
        return [node["const"]]
    enum = node.get("enum")
    return list(enum) if isinstance(enum, list) else None


def _filter_by_siblings(node: dict, values: list[Any]) -> list[Any]:
    import jsonschema

    rest = {k: v for k, v in node.items() if k not in ("const", "enum")}
    if "$ref" in json.dumps(rest):
        return values
    validator = jsonschema.validators.validator_for(rest)(rest)
    return [v for v in values if validator.is_valid(v)]


def literal_regex(value: Any, whitespace: str, escape: Any) -> str:
    """A regex matching ``value`` as JSON, with ``whitespace`` where outlines-core puts it;
    ``escape`` turns literal text into a regex."""
    ws = f"(?:{whitespace})" if whitespace else ""
    if isinstance(value, dict):
        items = [
            f"{escape(json.dumps(k, ensure_ascii=False))}{ws}:{ws}"
            f"{literal_regex(v, whitespace, escape)}"
            for k, v in value.items()
        ]
        return rf"\{{{ws}" + f"{ws},{ws}".join(items) + rf"{ws}\}}"
    if isinstance(value, list):
        items = [literal_regex(v, whitespace, escape) for v in value]
        return rf"\[{ws}" + f"{ws},{ws}".join(items) + rf"{ws}\]"
    return escape(json.dumps(value, ensure_ascii=False))


def unescaped_property_names(schema: Any) -> list[str]:
    """Property names (in ``properties``/``required``) that JSON must escape (a quote, a
    backslash or a control character): outlines-core writes them into the regex raw."""
    found: list[str] = []
    if isinstance(schema, list):
        for item in schema:
            found += unescaped_property_names(item)
    elif isinstance(schema, dict):
        for key, value in schema.items():
            if key == "properties" and isinstance(value, dict):
                found += [n for n in value if json.dumps(n, ensure_ascii=False)[1:-1] != n]
                for sub in value.values():
                    found += unescaped_property_names(sub)
            elif key not in _DATA_KEYS:
                found += unescaped_property_names(value)
    return found


# ---- additionalProperties ------------------------------------------------------------------------

_COMBINATORS = ("anyOf", "oneOf", "allOf", "$ref")
_OBJECT_KEYWORDS = ("properties", "required", "additionalProperties", "patternProperties")


def closed_objects(schema: Any) -> Any:
    """A copy of ``schema`` in which every object subschema with ``properties`` and no word on
    extra properties gets ``"additionalProperties": false`` — what outlines-core assumes — unless
    it requires a property that ``properties`` does not list.

    NOTE: JSON Schema allows extra properties by default and llguidance honours that, so a model
    may keep inventing properties until ``max_new_tokens``; closing the objects keeps both
    backends (and ``auto``) to the same outputs. A schema that intersects object schemas
    (``allOf``, or object keywords next to ``anyOf``/``oneOf``/``$ref``) is left as it is:
    closing one side of an intersection would reject the other side's properties.
    """
    if _intersects_objects(schema):
        return schema

    def visit(node: Any) -> Any:
        if isinstance(node, list):
            return [visit(x) for x in node]
        if not isinstance(node, dict):
            return node
        out = _map_subschemas(node, visit)
        extra = ("additionalProperties", "patternProperties", "unevaluatedProperties")
        props, required = node.get("properties"), node.get("required") or []
        if (
            isinstance(props, dict)
            and not any(k in node for k in extra)
            and all(name in props for name in required if isinstance(name, str))
        ):
            out["additionalProperties"] = False
        return out

    return visit(schema)


def _intersects_objects(node: Any) -> bool:
    if isinstance(node, list):
        return any(_intersects_objects(x) for x in node)
    if not isinstance(node, dict):
        return False
    if "allOf" in node or (
        any(k in node for k in _COMBINATORS) and any(k in node for k in _OBJECT_KEYWORDS)
    ):
        return True
    for key, value in node.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            if any(_intersects_objects(sub) for sub in value.values()):
                return True
        elif key not in _DATA_KEYS and _intersects_objects(value):
            return True
    return False
