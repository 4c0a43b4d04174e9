"""Which JSON Schema keywords the regex compilation enforces, and which it would silently drop.

outlines-core turns a schema into a regex: types, ``properties``/``required``/
``additionalProperties``, ``items``/``prefixItems``/``minItems``/``maxItems``, ``enum``,
``const``, ``anyOf``/``oneOf``/``allOf``, local ``$ref``, string ``minLength``/``maxLength``/
``pattern`` and some ``format`` values. Numeric bounds and the other keywords below cannot be
expressed that way and are dropped by the conversion — an output then always parses but may
fail those keywords. By default (``--json-schema-unenforced ignore``, SGLang's behaviour) such
schemas are decoded best-effort and the dropped keywords are logged; ``reject`` refuses them
with a 400 naming each keyword. (``format`` is an annotation in JSON Schema, not an assertion,
so unknown formats are not counted.)
"""

from __future__ import annotations

from typing import Any

UNENFORCED_KEYWORDS = frozenset(
    {
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
        "uniqueItems", "contains", "minContains", "maxContains", "minProperties",
        "maxProperties", "patternProperties", "propertyNames", "dependencies",
        "dependentRequired", "dependentSchemas", "if", "then", "else", "not",
        "unevaluatedProperties", "unevaluatedItems",
    }
)  # fmt: skip
# Keys whose values are maps of names → subschemas (not keywords themselves).
_SCHEMA_MAPS = ("properties", "$defs", "definitions")


def unenforced_keywords(schema: Any, path: str = "") -> list[str]:
    """``"<path>: <keyword>"`` for every keyword in ``schema`` the regex cannot enforce."""
    found: list[str] = []
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            found += unenforced_keywords(item, f"{path}/{i}")
        return found
    if not isinstance(schema, dict):
        return found
    for key, value in schema.items():
        where = f"{path}/{key}"
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                found += unenforced_keywords(sub, f"{where}/{name}")
            continue
        if key in ("enum", "const", "default", "examples", "required"):
            continue  # data, not subschemas
        if key in UNENFORCED_KEYWORDS:
            found.append(f"{path or '/'}: {key}")
        elif isinstance(value, (dict, list)):
            found += unenforced_keywords(value, where)
    return found


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
    """A copy of ``schema`` with every string ``pattern`` narrowed by ``json_safe_pattern``."""
    if isinstance(schema, list):
        return [with_json_safe_patterns(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "pattern" and isinstance(value, str):
            out[key] = json_safe_pattern(value)
        elif key in ("enum", "const", "default", "examples"):
            out[key] = value
        else:
            out[key] = with_json_safe_patterns(value)
    return out
