"""Hypothesis strategies for JSON values: those valid for a JSON schema of an OpenAPI document
(:func:`from_schema`, covering the keywords pydantic emits), any JSON (:data:`any_json`), and
mutations that make a valid body invalid (:func:`mutate`).

Sizes are small on purpose (short strings and lists, a few optional fields at a time): the
bodies go to a live server and each one costs a request.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st

MAX_ITEMS = 3
MAX_TEXT = 16

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=MAX_TEXT)
)
any_json = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=MAX_ITEMS)
        | st.dictionaries(st.text(max_size=8), inner, max_size=MAX_ITEMS)
    ),
    max_leaves=6,
)


class SchemaStrategies:
    """Strategies for the schemas of ``doc`` (``$ref`` to ``#/components/schemas/...``)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self._refs: dict[str, st.SearchStrategy] = {}

    def resolve(self, ref: str) -> dict[str, Any]:
        node: Any = self.doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def from_schema(self, schema: dict[str, Any] | bool) -> st.SearchStrategy:
        if schema is True or schema == {} or set(schema) <= {"title", "description", "default"}:
            return any_json
        if "$ref" in schema:
            ref = schema["$ref"]
            if ref not in self._refs:  # deferred: schemas may refer to themselves
                self._refs[ref] = st.deferred(lambda: self.from_schema(self.resolve(ref)))
            return self._refs[ref]
        if "const" in schema:
            return st.just(schema["const"])
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return st.one_of([self.from_schema(s) for s in schema[key]])
        strategy = self._typed(schema)
        if "not" in schema:
            banned = schema["not"]
            assert set(banned) == {"const"}, f"unsupported 'not': {banned}"
            strategy = strategy.filter(lambda x: x != banned["const"])
        return strategy

    def _typed(self, s: dict[str, Any]) -> st.SearchStrategy:
        kind = s.get("type")
        if kind == "null":
            return st.none()
        if kind == "boolean":
            return st.booleans()
        if kind == "integer":
            lo = _bound(s, "minimum", "exclusiveMinimum", 1)
            hi = _bound(s, "maximum", "exclusiveMaximum", -1)
            return st.integers(min_value=lo, max_value=hi)
        if kind == "number":
            return self._number(s)
        if kind == "string":
            if "pattern" in s:
                return st.from_regex(s["pattern"], fullmatch=True).filter(
                    lambda x: len(x) <= s.get("maxLength", math.inf)
                )
            lo = s.get("minLength", 0)
            return st.text(min_size=lo, max_size=min(s.get("maxLength", MAX_TEXT), lo + MAX_TEXT))
        if kind == "array":
            return self._array(s)
        if kind == "object":
            return self._object(s)
        raise AssertionError(f"unsupported schema {s}")

    def _number(self, s: dict[str, Any]) -> st.SearchStrategy:
        lo, hi = s.get("minimum"), s.get("maximum")
        xlo, xhi = s.get("exclusiveMinimum"), s.get("exclusiveMaximum")
        floats = st.floats(
            min_value=lo if xlo is None else xlo,
            max_value=hi if xhi is None else xhi,
            exclude_min=xlo is not None,
            exclude_max=xhi is not None,
            allow_nan=False,
            allow_infinity=False,
        )
        int_lo = math.ceil(lo) if lo is not None else None if xlo is None else math.floor(xlo) + 1
        int_hi = math.floor(hi) if hi is not None else None if xhi is None else math.ceil(xhi) - 1
        ints = st.integers(min_value=int_lo, max_value=int_hi)
        return floats | ints

    def _array(self, s: dict[str, Any]) -> st.SearchStrategy:
        if "prefixItems" in s:
            return st.tuples(*(self.from_schema(x) for x in s["prefixItems"])).map(list)
        lo = s.get("minItems", 0)
        hi = min(s.get("maxItems", MAX_ITEMS), max(lo, MAX_ITEMS))
        return st.lists(self.from_schema(s.get("items", True)), min_size=lo, max_size=hi)

    def _object(self, s: dict[str, Any]) -> st.SearchStrategy:
        props = s.get("properties", {})
        extra = s.get("additionalProperties", True)
        if s.get("maxProperties") == 0:
            return st.just({})
        if "patternProperties" in s:
            (pattern, values), *_ = s["patternProperties"].items()
            keys = st.from_regex(pattern, fullmatch=True)
            return st.dictionaries(keys, self.from_schema(values), max_size=MAX_ITEMS)
        required = set(s.get("required", ()))
        fixed = st.fixed_dictionaries(
            {k: self.from_schema(v) for k, v in props.items() if k in required},
            optional={k: self.from_schema(v) for k, v in props.items() if k not in required},
        )
        if extra is False:
            return fixed
        unknown = st.text(min_size=1, max_size=8).filter(lambda k: k not in props)
        others = st.dictionaries(unknown, any_json, max_size=1 if props else MAX_ITEMS)
        return st.tuples(fixed, others).map(lambda pair: {**pair[1], **pair[0]})


def _bound(s: dict[str, Any], inclusive: str, exclusive: str, step: int) -> float | None:
    if inclusive in s:
        return s[inclusive]
    if exclusive in s:
        return s[exclusive] + step
    return None


# ---- invalid bodies ------------------------------------------------------------------------
MALFORMED = [b"", b"{", b"[1, 2", b'{"text": "a",}', b"\xff\xfe{}", b"null", b'"text"', b"{}" * 3]


@st.composite
def mutate(draw: st.DrawFn, body: dict[str, Any]) -> bytes | dict[str, Any] | Any:
    """``body`` made (most likely) invalid: a field dropped, given a value of any JSON type,
    an unknown field added, a nested value replaced, or the whole body replaced by other JSON
    or by malformed bytes (returned as ``bytes``)."""
    how = draw(st.sampled_from(["drop", "retype", "unknown", "nested", "other", "bytes"]))
    out = dict(body)
    if how == "drop" and out:
        out.pop(draw(st.sampled_from(sorted(out))))
    elif how == "retype" and out:
        out[draw(st.sampled_from(sorted(out)))] = draw(any_json)
    elif how == "unknown":
        out[draw(st.text(min_size=1, max_size=12))] = draw(any_json)
    elif how == "nested":
        nested = [k for k, v in out.items() if isinstance(v, (dict, list)) and v]
        if nested:
            key = draw(st.sampled_from(sorted(nested)))
            out[key] = _replace_inside(draw, out[key])
    elif how == "other":
        return draw(any_json)
    elif how == "bytes":
        return draw(st.sampled_from(MALFORMED) | st.binary(max_size=12))
    return out


def _replace_inside(draw: st.DrawFn, value: Any) -> Any:
    """``value`` (a list or an object) with one entry, at some depth, replaced by any JSON."""
    if isinstance(value, list) and value:
        i = draw(st.integers(0, len(value) - 1))
        inner = value[i]
        new = _replace_inside(draw, inner) if draw(st.booleans()) else draw(any_json)
        return [*value[:i], new, *value[i + 1 :]]
    if isinstance(value, dict) and value:
        k = draw(st.sampled_from(sorted(value)))
        new = _replace_inside(draw, value[k]) if draw(st.booleans()) else draw(any_json)
        return {**value, k: new}
    return draw(any_json)
