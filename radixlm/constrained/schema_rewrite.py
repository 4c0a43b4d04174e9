"""Equivalent rewrites of a JSON schema into the forms the grammar backends enforce exactly.

``normalize(schema)`` returns a schema with exactly the same valid instances, in which:

- ``enum``/``const`` next to other assertions become the ``enum`` of the values that pass them
  (``{"type": "string", "enum": ["a", 1]}`` → ``{"enum": ["a"]}``): a backend that writes an
  alternation of the literals can no longer accept a value its siblings reject;
- array-form ``dependencies`` and ``dependentRequired`` (``{"a": ["b"]}``: if ``a`` is present,
  so is ``b``) become ``anyOf: [{"properties": {"a": false}}, {"required": ["a", "b"]}]``;
- ``oneOf`` becomes ``anyOf`` when its branches are provably disjoint (no instance can match two):
  different JSON types (``integer`` overlaps ``number``), disjoint ``const``/``enum`` values, or
  objects that all require one property whose ``const``/``enum`` values are disjoint;
- ``oneOf`` of bare ``required`` sets ("exactly one of these sets is present") becomes an
  ``anyOf`` whose branch *i* requires set *i* and forbids the one name that each other set
  adds to it (a branch whose set contains another's can never match alone and is dropped);
  when some other set adds more than one name the ``oneOf`` is left as it is.

- ``format: "date"`` (without a ``pattern``) becomes ``DATE_PATTERN``, the calendar dates that
  ``jsonschema``'s check accepts (years 0001-9999, February 29 only in leap years): the
  backends' own date grammars also take 2023-02-29 and year 0000.

Anything else is left unchanged; ``schema_exact`` then reports what a backend cannot enforce.
NOTE: ``dependencies`` is a keyword of drafts 4 to 7 only; in a 2019-09/2020-12 schema it means
nothing, and enforcing it anyway only narrows the outputs (they still validate).
"""

from __future__ import annotations

import json
from typing import Any

from radixlm.constrained.schema_exact import ANNOTATIONS, MAX_SCHEMA_DEPTH, subschemas
from radixlm.errors import GrammarError

_NUMBER = frozenset({"integer", "fraction"})  # JSON numbers: integral values, and the others
_TYPES = {
    "null": {"null"},
    "boolean": {"boolean"},
    "object": {"object"},
    "array": {"array"},
    "string": {"string"},
    "integer": {"integer"},
    "number": set(_NUMBER),
}
_ALL_TYPES = frozenset().union(*_TYPES.values())

_YEAR = "(?:[0-9]{3}[1-9]|[0-9]{2}[1-9][0-9]|[0-9][1-9][0-9]{2}|[1-9][0-9]{3})"  # not 0000
_LEAP_YEAR = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
DATE_PATTERN = (
    f"^(?:{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    f"|{_LEAP_YEAR}-02-29)$"
)


def normalize(schema: Any) -> Any:
    """An equivalent copy of ``schema`` (see the module docstring); the input is not mutated.
    ``GrammarError`` when it is plainly unsatisfiable (no value of a root ``enum`` fits)."""
    out = _rewrite(schema, schema, 0)
    if out is False:
        raise GrammarError(
            "json_schema has a const/enum none of whose values satisfies the keywords next to "
            "it; no output can validate"
        )
    return out


def _rewrite(node: Any, root: Any, depth: int) -> Any:
    if not isinstance(node, dict) or depth > MAX_SCHEMA_DEPTH:
        return node
    out = dict(node)
    for key in dict.fromkeys(k for k, _, _ in subschemas(node, "")):  # each keyword once
        value = node[key]
        if isinstance(value, list):
            out[key] = [_rewrite(v, root, depth + 1) for v in value]
        elif key in ("properties", "patternProperties", "dependentSchemas", "dependencies"):
            out[key] = {
                k: _rewrite(v, root, depth + 1) if isinstance(v, (dict, bool)) else v
                for k, v in value.items()
            }
        else:
            out[key] = _rewrite(value, root, depth + 1)
    for key in ("$defs", "definitions"):
        if isinstance(node.get(key), dict):
            out[key] = {k: _rewrite(v, root, depth + 1) for k, v in node[key].items()}
    if out.get("format") == "date" and "pattern" not in out:
        out["pattern"] = DATE_PATTERN
        del out["format"]
    out = _filter_literals(out)
    if out is False:
        return out
    out = _dependencies(out)
    if isinstance(out.get("oneOf"), list):
        out = _one_of(out, root)
    return out


# ---- enum / const with siblings ------------------------------------------------------------


def _filter_literals(node: dict) -> dict | bool:
    """``node`` with its literals filtered by their siblings; ``False`` (the schema no value
    satisfies) when none is left: an optional property with it can still be left out."""
    if "const" in node:
        values = [node["const"]]
    elif isinstance(node.get("enum"), list):
        values = list(node["enum"])
    else:
        return node
    rest = {k: v for k, v in node.items() if k not in ("const", "enum") and k not in ANNOTATIONS}
    if not rest or "$ref" in json.dumps(rest):
        return node  # nothing to filter by, or siblings that need the whole document
    import jsonschema

    validator = jsonschema.validators.validator_for(rest)(rest)
    kept = [v for v in values if validator.is_valid(v)]
    if not kept:
        return False
    annotations = {k: v for k, v in node.items() if k in ANNOTATIONS}
    return {**annotations, "enum": kept}


# ---- dependencies ----------------------------------------------------------------------------


def _dependencies(node: dict) -> dict:
    groups: list[dict] = []
    out = dict(node)
    for key in ("dependentRequired", "dependencies"):
        value = node.get(key)
        if not isinstance(value, dict):
            continue
        names = {k: v for k, v in value.items() if isinstance(v, list)}
        if not names:
            continue
        rest = {k: v for k, v in value.items() if k not in names}
        if rest:
            out[key] = rest  # schema-form dependencies stay (and are reported if unenforced)
        else:
            del out[key]
        for name, needs in names.items():
            required = [name, *(n for n in needs if n != name)]
            groups.append({"anyOf": [{"properties": {name: False}}, {"required": required}]})
    if groups:
        out["allOf"] = [*out.get("allOf", []), *groups]
    return out


# ---- oneOf -----------------------------------------------------------------------------------


def _one_of(node: dict, root: Any) -> dict:
    branches = node["oneOf"]
    replacement = _required_sets(branches)
    if replacement is None and _pairwise_disjoint(branches, root):
        replacement = branches
    if replacement is None:
        return node
    out = {k: v for k, v in node.items() if k != "oneOf"}
    if "anyOf" in out:
        out["allOf"] = [*out.get("allOf", []), {"anyOf": replacement}]
    else:
        out["anyOf"] = replacement
    return out


def _required_sets(branches: list) -> list[dict] | None:
    sets = []
    for b in branches:
        if not isinstance(b, dict) or not isinstance(b.get("required"), list):
            return None
        if set(b) - ANNOTATIONS - {"required"} or not b["required"]:
            return None
        sets.append(list(dict.fromkeys(b["required"])))
    out = []
    for i, mine in enumerate(sets):
        forbidden, possible = [], True
        for j, other in enumerate(sets):
            if i == j:
                continue
            extra = [n for n in other if n not in mine]
            if not extra:
                possible = False  # set j holds whenever set i does
                break
            if len(extra) > 1:
                return None  # "not all of these" has no simple exact form
            forbidden.append(extra[0])
        if possible:
            branch: dict[str, Any] = {"required": mine}
            if forbidden:
                branch["properties"] = {n: False for n in dict.fromkeys(forbidden)}
            out.append(branch)
    return out or [False]


def _pairwise_disjoint(branches: list, root: Any) -> bool:
    facts = [_facts(b, root) for b in branches]
    return all(
        _disjoint(facts[i], facts[j]) for i in range(len(facts)) for j in range(i + 1, len(facts))
    )


def _facts(branch: Any, root: Any, depth: int = 0) -> dict:
    """What a branch admits: ``types`` (JSON types), ``values`` (its literals, or None for
    any), ``tags`` (required property → set of allowed literal values)."""
    if branch is False:
        return {"types": frozenset(), "values": frozenset(), "tags": {}}
    if not isinstance(branch, dict) or depth > 8:
        return {"types": _ALL_TYPES, "values": None, "tags": {}}
    ref = branch.get("$ref")
    if isinstance(ref, str) and ref.startswith("#") and len(branch.keys() - ANNOTATIONS) == 1:
        from radixlm.constrained.schema_exact import resolve_pointer

        try:
            return _facts(resolve_pointer(root, ref[1:]), root, depth + 1)
        except GrammarError:
            return {"types": _ALL_TYPES, "values": None, "tags": {}}
    values = _literals(branch)
    types = set(_ALL_TYPES)
    if values is not None:
        types = {_type_of(json.loads(v)) for v in values}
    if isinstance(branch.get("type"), (str, list)):
        named = branch["type"] if isinstance(branch["type"], list) else [branch["type"]]
        types &= set().union(*(_TYPES.get(t, set()) for t in named))
    tags = {}
    props = branch.get("properties") if isinstance(branch.get("properties"), dict) else {}
    for name in branch.get("required") or []:
        literal = _literals(props.get(name)) if isinstance(props.get(name), dict) else None
        if literal is not None:
            tags[name] = literal
    return {"types": frozenset(types), "values": values, "tags": tags}


def _literals(node: Any) -> frozenset[str] | None:
    """Canonical JSON texts of a node's ``const``/``enum`` values (None: not a literal node)."""
    if not isinstance(node, dict):
        return None
    if "const" in node:
        return frozenset({json.dumps(node["const"], sort_keys=True)})
    if isinstance(node.get("enum"), list):
        return frozenset(json.dumps(v, sort_keys=True) for v in node["enum"])
    return None


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "integer" if float(value).is_integer() else "fraction"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def _disjoint(a: dict, b: dict) -> bool:
    if not a["types"] & b["types"]:
        return True
    if a["values"] is not None and b["values"] is not None:
        # 1 and 1.0 are equal JSON numbers: compare numbers by value
        return not {_number_key(v) for v in a["values"]} & {_number_key(v) for v in b["values"]}
    if a["types"] <= {"object"} and b["types"] <= {"object"}:
        return any(not a["tags"][n] & b["tags"][n] for n in a["tags"].keys() & b["tags"].keys())
    return False


def _number_key(text: str) -> str:
    value = json.loads(text)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(float(value))
    return text
