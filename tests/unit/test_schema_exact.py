"""Exact JSON Schema enforcement: every allowlisted keyword of every backend proven against
``jsonschema``, and each defect found on real schemas (issue 13, D1-D9) as a regression test with
its minimal schema, on every backend that accepts it."""

from __future__ import annotations

import json

import jsonschema
import pytest

from radixlm.constrained.backends import check_enforceable, create_backend
from radixlm.constrained.base import GrammarSpec, UnsupportedGrammarError
from radixlm.constrained.llguidance_backend import LLGUIDANCE_SUPPORT
from radixlm.constrained.outlines_schema import OUTLINES_SUPPORT
from radixlm.constrained.schema_exact import find_unenforced
from radixlm.constrained.schema_rewrite import normalize
from radixlm.errors import GrammarError
from radixlm.tokenizer import load_tokenizer
from tests.unit.constrained_helpers import GPT2_DIR, walk

# keyword → (schema, a valid instance, an invalid one), instances in the compact layout.
KEYWORDS = {
    "type": ({"type": "integer"}, "3", '"a"'),
    "enum": ({"enum": ["a", "b"]}, '"a"', '"c"'),
    "const": ({"const": {"k": 1}}, '{"k":1}', '{"k":2}'),
    "properties": ({"type": "object", "properties": {"a": {"type": "integer"}}}, '{"a":1}',
                   '{"a":"x"}'),
    "required": ({"type": "object", "properties": {"a": {"type": "integer"},
                  "b": {"type": "integer"}}, "required": ["b"]}, '{"b":1}', '{"a":1}'),
    "additionalProperties": ({"type": "object", "properties": {"a": {"type": "integer"}},
                              "additionalProperties": False}, '{"a":1}', '{"a":1,"b":2}'),
    "patternProperties": ({"type": "object", "patternProperties": {"^x": {"type": "integer"}},
                           "additionalProperties": False}, '{"xa":1}', '{"xa":"s"}'),
    "minProperties": ({"type": "object", "minProperties": 1}, '{"a":1}', "{}"),
    "maxProperties": ({"type": "object", "maxProperties": 1}, '{"a":1}', '{"a":1,"b":2}'),
    "items": ({"type": "array", "items": {"type": "integer"}}, "[1,2]", '[1,"a"]'),
    "prefixItems": ({"type": "array", "prefixItems": [{"type": "string"}]}, '["a"]', "[1]"),
    "additionalItems": ({"$schema": "http://json-schema.org/draft-07/schema#",
                         "type": "array", "items": [{"type": "string"}],
                         "additionalItems": False}, '["a"]', '["a",1]'),
    "minItems": ({"type": "array", "items": {"type": "integer"}, "minItems": 2}, "[1,2]", "[1]"),
    "maxItems": ({"type": "array", "items": {"type": "integer"}, "maxItems": 1}, "[1]", "[1,2]"),
    "anyOf": ({"anyOf": [{"type": "integer"}, {"type": "boolean"}]}, "true", '"a"'),
    "allOf": ({"allOf": [
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]},
    ]}, '{"a":1,"b":2}', '{"a":1}'),
    "$ref": ({"$defs": {"n": {"type": "integer"}}, "type": "object",
              "properties": {"a": {"$ref": "#/$defs/n"}}}, '{"a":1}', '{"a":"x"}'),
    "minLength": ({"type": "string", "minLength": 2}, '"ab"', '"a"'),
    "maxLength": ({"type": "string", "maxLength": 2}, '"ab"', '"abc"'),
    "pattern": ({"type": "string", "pattern": "^[0-9]+$"}, '"12"', '"1a"'),
    "format": ({"type": "string", "format": "date"}, '"2024-01-31"', '"2024-13-01"'),
    "minimum": ({"type": "integer", "minimum": 3}, "3", "2"),
    "maximum": ({"type": "integer", "maximum": 7}, "7", "8"),
    "exclusiveMinimum": ({"type": "integer", "exclusiveMinimum": 3}, "4", "3"),
    "exclusiveMaximum": ({"type": "integer", "exclusiveMaximum": 7}, "6", "7"),
    "multipleOf": ({"type": "integer", "multipleOf": 3}, "6", "7"),
}  # fmt: skip
SUPPORTS = {"outlines": OUTLINES_SUPPORT, "llguidance": LLGUIDANCE_SUPPORT}


@pytest.fixture(scope="module")
def gpt2():
    tokenizer = load_tokenizer(GPT2_DIR)
    backends = {
        name: create_backend(name, tokenizer, 50304, [tokenizer.eos_token_id])
        for name in ("outlines", "llguidance", "auto")
    }
    yield tokenizer, backends
    for b in backends.values():
        b.close()


def accepts(grammar, tokenizer, text: str) -> bool:
    """Whether the grammar accepts ``text`` as a complete output (any tokenization)."""
    m = grammar.matcher()
    return all(m.advance(t) for t in tokenizer.encode(text, add_special_tokens=False)) and (
        m.is_final()
    )


def exact(backend, schema: dict):
    return backend.compile(GrammarSpec("json_schema", json.dumps(schema)), "exact")


@pytest.mark.parametrize("name", sorted(SUPPORTS))
def test_every_allowlisted_keyword_has_a_proof(name) -> None:
    assert SUPPORTS[name].exact <= set(KEYWORDS), "an allowlisted keyword without a test row"


@pytest.mark.parametrize(
    "name, keyword", [(n, k) for n in sorted(SUPPORTS) for k in sorted(SUPPORTS[n].exact)]
)
def test_allowlisted_keyword_is_enforced_exactly(gpt2, name, keyword) -> None:
    tokenizer, backends = gpt2
    schema, good, bad = KEYWORDS[keyword]
    validator = jsonschema.validators.validator_for(schema)
    check = validator(schema, format_checker=validator.FORMAT_CHECKER)
    assert check.is_valid(json.loads(good)) and not check.is_valid(json.loads(bad))
    grammar = exact(backends[name], schema)
    assert accepts(grammar, tokenizer, good), good
    assert not accepts(grammar, tokenizer, bad), bad


# ---- the defects, each with its minimal schema ------------------------------------------------

DEFECTS = {
    "bounds": ({"type": "object", "properties": {"days": {"type": "integer", "minimum": 1,
                "maximum": 7}}}, '{"days":7}', '{"days":494}'),
    "unit_interval": ({"type": "object", "properties": {"confidence": {"type": "number",
                       "minimum": 0, "maximum": 1}}}, '{"confidence":0.5}',
                      '{"confidence":460242}'),
    "D1_required_not_in_properties": ({"type": "object", "properties": {"a": {"type": "integer"}},
                                       "required": ["a", "location"]},
                                      '{"a":2,"location":"x"}', '{"a":2}'),
    "D2_pattern_with_min_length": ({"type": "string", "minLength": 1,
                                    "pattern": "^[0-9A-F]*$"}, '"0A"', '"xyz"'),
    "D4_empty_member_schema": ({"type": "object", "properties": {"p": {}}},
                               '{"p":[1,{"a":null}]}', '{"p":1,2}'),
    "D5_all_of_objects": ({"allOf": [
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]},
    ]}, '{"a":58,"b":58}', '{"a":58}{"b":58}'),
    "D9_enum_against_type": ({"type": "string", "enum": ["a", 1]}, '"a"', "1"),
    "one_of_required_sets": ({"type": "object", "properties": {"a": {"type": "string"},
                              "b": {"type": "string"}},
                              "oneOf": [{"required": ["a"]}, {"required": ["b"]}]},
                             '{"a":"x"}', '{"a":"x","b":"y"}'),
    "one_of_disjoint_types": ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, "1", "true"),
    "one_of_discriminated": ({"oneOf": [
        {"type": "object", "properties": {"k": {"const": "x"}, "v": {"type": "integer"}},
         "required": ["k", "v"]},
        {"type": "object", "properties": {"k": {"const": "y"}, "w": {"type": "string"}},
         "required": ["k", "w"]},
    ]}, '{"k":"x","v":1}', '{"k":"x","w":"s"}'),
    "dependencies_array": ({"$schema": "http://json-schema.org/draft-07/schema#",
                            "type": "object", "properties": {"a": {"type": "string"},
                            "b": {"type": "string"}}, "dependencies": {"a": ["b"]}},
                           '{"a":"x","b":"y"}', '{"a":"x"}'),
}  # fmt: skip


@pytest.mark.parametrize("defect", sorted(DEFECTS))
@pytest.mark.parametrize("name", ["auto", "llguidance", "outlines"])
def test_defect_is_enforced_or_refused(gpt2, name, defect) -> None:
    """Each backend either enforces the schema exactly (the bad output is rejected) or refuses it
    as unsupported; ``auto`` always finds one that enforces it."""
    tokenizer, backends = gpt2
    schema, good, bad = DEFECTS[defect]
    jsonschema.validate(json.loads(good), schema)
    try:
        grammar = exact(backends[name], schema)
    except UnsupportedGrammarError:
        assert name == "outlines", f"{name} should enforce {defect}"
        return
    assert grammar.unenforced == ()
    assert accepts(grammar, tokenizer, good)
    assert not accepts(grammar, tokenizer, bad)


@pytest.mark.parametrize("seed", range(4))
def test_d4_empty_member_outputs_are_json(gpt2, seed) -> None:
    _, backends = gpt2
    schema = {"type": "object", "properties": {"p": {}, "q": True}, "required": ["p"]}
    backend = backends["auto"]
    grammar = backend.compile(GrammarSpec("json_schema", json.dumps(schema)))
    ids = walk(backend.members["llguidance"], grammar, seed, exact_advance=False)
    jsonschema.validate(json.loads(backend.vocab.decode(ids)), schema)


UNENFORCEABLE = {  # D6 / D7: no backend enforces them; they are reported, never dropped silently
    "D6_overlapping_one_of": ({"type": "object", "properties": {"x": {"oneOf": [
        {"type": "number"}, {"type": "integer"}]}}}, "/properties/x: oneOf", '{"x":37}'),
    "unique_items": ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
                     "/: uniqueItems", "[1,2,1,1]"),
    "not": ({"type": "integer", "not": {"const": 3}}, "/: not", "3"),
    "if_then": ({"type": "object", "properties": {"a": {"type": "integer"}},
                 "if": {"required": ["a"]}, "then": {"minProperties": 2}}, "/: if", '{"a":1}'),
    "property_names": ({"type": "object", "propertyNames": {"maxLength": 1}},
                       "/: propertyNames", '{"ab":1}'),
    "contains": ({"type": "array", "contains": {"type": "string"}}, "/: contains", "[1]"),
    "dependencies_schema": ({"$schema": "http://json-schema.org/draft-07/schema#",
                             "type": "object", "properties": {"a": {"type": "integer"}},
                             "dependencies": {"a": {"required": ["b"]}}}, "/: dependencies",
                            '{"a":1}'),
    "unknown_format": ({"type": "string", "format": "x-color"},
                       "/: format (unknown format 'x-color')", None),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(UNENFORCEABLE))
def test_unenforceable_keywords_are_reported_and_outputs_flagged(gpt2, case) -> None:
    _, backends = gpt2
    schema, reported, bad = UNENFORCEABLE[case]
    grammar = backends["auto"].compile(GrammarSpec("json_schema", json.dumps(schema)))
    assert reported in [str(u) for u in grammar.unenforced]
    if bad is not None:
        valid, error = grammar.check_output(bad)
        assert valid is False and error
    strict = GrammarSpec("json_schema", json.dumps(schema))
    with pytest.raises(GrammarError, match="cannot enforce") as info:
        backends["auto"].build(strict, "reject")
    assert reported.split(" (")[0] in str(info.value)
    with pytest.raises(GrammarError, match="cannot enforce exactly"):
        check_enforceable(json.dumps(schema), "auto")


def test_check_enforceable_passes_what_auto_enforces() -> None:
    for schema, _, _ in DEFECTS.values():
        check_enforceable(json.dumps(schema), "auto")
    with pytest.raises(GrammarError, match="/properties/days: minimum"):
        check_enforceable(json.dumps(DEFECTS["bounds"][0]), "outlines")


def test_cyclic_ref_and_deep_schemas_are_clear_400s(gpt2) -> None:
    _, backends = gpt2
    cyclic = {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}
    indirect = {"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/b"}]}, "b": {"$ref": "#/$defs/a"}},
                "$ref": "#/$defs/a"}  # fmt: skip
    for schema in (cyclic, indirect, {"anyOf": [{"$ref": "#"}]}):
        with pytest.raises(GrammarError, match=r"\$ref cycle with no base case"):
            backends["auto"].build(GrammarSpec("json_schema", json.dumps(schema)))
    recursive = {"type": "object", "properties": {"next": {"$ref": "#"}}}  # has a base case
    backends["auto"].build(GrammarSpec("json_schema", json.dumps(recursive)))
    deep: dict = {"type": "integer"}
    for _ in range(200):
        deep = {"type": "object", "properties": {"a": deep}}
    for schema in (json.dumps(deep), "[" * 50_000 + "]" * 50_000):
        with pytest.raises(GrammarError) as info:
            backends["auto"].build(GrammarSpec("json_schema", schema))
        assert "Recursion" not in str(info.value)


def test_normalize_keeps_the_set_of_valid_instances() -> None:
    """The rewrites are equivalences: jsonschema agrees on the original and the rewrite."""
    for schema, good, bad in DEFECTS.values():
        rewritten = normalize(schema)
        for text in (good, bad):
            try:
                value = json.loads(text)
            except ValueError:
                continue
            assert jsonschema.validators.validator_for(schema)(schema).is_valid(value) == (
                jsonschema.validators.validator_for(rewritten)(rewritten).is_valid(value)
            ), (schema, text)


def test_find_unenforced_points_at_referenced_definitions() -> None:
    schema = {"type": "object", "properties": {"t": {"$ref": "#/$defs/tag~1x"}},
              "$defs": {"tag/x": {"type": "array", "uniqueItems": True}}}  # fmt: skip
    found = find_unenforced(schema, LLGUIDANCE_SUPPORT)
    assert [str(u) for u in found] == ["/$defs/tag~1x: uniqueItems"]


def test_date_pattern_is_exactly_the_calendar() -> None:
    import datetime
    import re

    from radixlm.constrained.schema_rewrite import DATE_PATTERN

    day = datetime.timedelta(days=1)
    for year in (1, 4, 100, 400, 1900, 1999, 2000, 2023, 2024, 2100, 9999):
        d = datetime.date(year, 1, 1)
        while d.year == year:
            assert re.fullmatch(DATE_PATTERN, d.isoformat()), d
            if d == datetime.date.max:
                break
            d += day
        for month in range(1, 13):
            for dd in range(29, 33):
                text = f"{year:04d}-{month:02d}-{dd:02d}"
                try:
                    datetime.date.fromisoformat(text)
                except ValueError:
                    assert not re.fullmatch(DATE_PATTERN, text), text
    for text in ("0000-01-01", "2023-02-29", "2024-13-01", "2024-00-10", "2024-1-01"):
        assert not re.fullmatch(DATE_PATTERN, text), text


def test_date_format_is_enforced_as_the_checker_does(gpt2) -> None:
    tokenizer, backends = gpt2
    schema = {"type": "object", "properties": {"d": {"type": "string", "format": "date"}},
              "required": ["d"]}  # fmt: skip
    for name in ("llguidance", "outlines"):
        grammar = exact(backends[name], schema)
        assert accepts(grammar, tokenizer, '{"d":"2024-02-29"}')
        for bad in ('{"d":"2023-02-29"}', '{"d":"0000-01-30"}'):
            assert not accepts(grammar, tokenizer, bad), (name, bad)


def test_widening_repeats_until_nothing_hidden_is_left(gpt2) -> None:
    """Dropping an overlapping oneOf (now an anyOf) exposes the keywords inside it."""
    _, backends = gpt2
    schema = {
        "type": "object",
        "properties": {
            "x": {
                "oneOf": [
                    {"type": "number", "not": {"const": 1}},
                    {"type": "integer", "uniqueItems": True},
                ]
            }
        },
    }
    grammar = backends["auto"].compile(GrammarSpec("json_schema", json.dumps(schema)))
    assert [str(u) for u in grammar.unenforced] == [
        "/properties/x: oneOf", "/properties/x/anyOf/0: not", "/properties/x/anyOf/1: uniqueItems"
    ]  # fmt: skip


def test_an_unsatisfiable_optional_enum_only_forbids_its_property(gpt2) -> None:
    tokenizer, backends = gpt2
    schema = {"type": "object", "properties": {"a": {"type": "integer"},
              "b": {"type": "object", "enum": ["x", "y"]}}, "required": ["a"]}  # fmt: skip
    grammar = exact(backends["llguidance"], schema)
    assert accepts(grammar, tokenizer, '{"a":1}')
    with pytest.raises(GrammarError, match="none of whose values"):
        backends["auto"].build(GrammarSpec("json_schema", '{"type": "integer", "enum": ["x"]}'))
