"""JSON-schema keyword support: which keywords are reported as unenforceable, how schema
``pattern``s are narrowed so that every match is valid raw JSON string content, and the
rewrites around outlines-core's conversion bugs (const/enum objects, anchors, alternatives)."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from radixlm.constrained.base import GrammarSpec, UnsupportedGrammarError
from radixlm.constrained.outlines_schema import OUTLINES_SUPPORT
from radixlm.constrained.schema_exact import find_unenforced
from radixlm.constrained.schema_support import (
    closed_objects,
    json_safe_pattern,
    strip_anchors,
    with_json_safe_patterns,
)
from radixlm.constrained.specs import spec_to_regex


def unenforced_keywords(schema: dict) -> list[str]:
    return [str(u) for u in find_unenforced(schema, OUTLINES_SUPPORT)]


def test_unenforced_keywords_are_found_with_paths():
    schema = {
        "type": "object",
        "properties": {
            "age": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "uniqueItems": True, "items": {"type": "string"}},
            "minimum": {"type": "string"},  # a property *named* minimum is fine
        },
        "$defs": {"x": {"type": "string", "not": {"type": "null"}}},  # unused: not checked
    }
    assert sorted(unenforced_keywords(schema)) == [
        "/properties/age: minimum",
        "/properties/tags: uniqueItems",
    ]
    schema["properties"]["x"] = {"$ref": "#/$defs/x"}
    assert "/$defs/x: not" in unenforced_keywords(schema)
    assert unenforced_keywords({"type": "string", "format": "hostname"}) == [
        "/: format (unknown format 'hostname')"
    ]


@pytest.mark.parametrize(
    "pattern,expected",
    [
        (r"a.b", r'a[^"\\\x00-\x1f\x7f]b'),
        (r"\s*x", r"[ ]*x"),
        (r"[^ab]+", r'[^ab"\\\x00-\x1f\x7f]+'),
        (r"[\s,]", r"[ ,]"),
        (r"\.\d", r"\.\d"),
        (r"[]a]", r"[]a]"),
    ],
)
def test_json_safe_pattern(pattern, expected):
    assert json_safe_pattern(pattern) == expected


def test_narrowed_pattern_matches_are_original_matches_and_valid_json():
    original = r"^\s*([0-9]{1,3}.){3}[0-9]{1,3}\s*$"
    narrowed = json_safe_pattern(original)
    for text in ["1.2.3.4", " 10a20b30c40 ", "1\n2\n3\n4", '1"2"3"4', "1\x0b2.3.4"]:
        if re.fullmatch(narrowed, text):
            assert re.fullmatch(original, text)
            assert json.loads(f'"{text}"') == text  # valid as raw JSON string content
    assert re.fullmatch(narrowed, "1.2.3.4") and re.fullmatch(narrowed, " 10a20b30c40 ")
    assert not re.fullmatch(narrowed, "1\n2\n3\n4") and not re.fullmatch(narrowed, '1"2"3"4')


def test_patterns_are_narrowed_everywhere_but_in_data():
    schema = {"properties": {"a": {"pattern": "."}}, "enum": [{"pattern": "."}]}
    out = with_json_safe_patterns(schema)
    assert out["properties"]["a"]["pattern"] != "." and out["enum"] == [{"pattern": "."}]


# --- rewrites around outlines-core 0.2.14 conversion bugs ------------------------------------


def _regex(schema: dict) -> str:
    return spec_to_regex(GrammarSpec("json_schema", json.dumps(schema)))[0]


@pytest.mark.parametrize(
    "schema, good, bad",
    [
        ({"const": {"a.b": 1}}, ['{"a.b":1}'], ['{"aXb":1}', '{"a.b":2}', '{ "a.b" : 1 }']),
        (
            {"enum": [{"x+y": "v.w"}, 1]},
            ['{"x+y":"v.w"}', "1"],
            ['{"xxy":"v.w"}', '{"x+y":"vXw"}', '{"xy":"v.w"}'],
        ),
        ({"const": {'q"': [1, {"k(": None}]}}, ['{"q\\"":[1,{"k(":null}]}'], ['{"q"":[1]}']),
        ({"const": ["a.b", {"c*": True}]}, ['["a.b",{"c*":true}]'], ['["a.b",{"cc":true}]']),
        (  # outlines let "properties" win over "enum": only enum values that fit stay
            {
                "type": "object",
                "enum": [{"a": 1}, {"a": "x"}],
                "properties": {"a": {"type": "string"}},
            },
            ['{"a":"x"}'],
            ['{"a":1}', '{"a":"y"}'],
        ),
    ],
)
def test_const_and_enum_objects_match_exactly_their_values(schema, good, bad):
    regex = _regex(schema)
    for text in good:
        assert re.fullmatch(regex, text), text
        jsonschema.validate(json.loads(text), schema)
    for text in bad:
        assert not re.fullmatch(regex, text), text


def test_const_object_inside_properties_and_defs():
    schema = {
        "type": "object",
        "properties": {"enum": {"const": {"k.": [1]}}, "r": {"$ref": "#/$defs/d"}},
        "required": ["enum", "r"],
        "$defs": {"d": {"enum": [[1, "x"], None]}},
    }
    regex = _regex(schema)
    assert re.fullmatch(regex, '{"enum":{"k.":[1]},"r":[1,"x"]}')
    assert re.fullmatch(regex, '{"enum":{"k.":[1]},"r":null}')
    assert not re.fullmatch(regex, '{"enum":{"kk":[1]},"r":null}')


@pytest.mark.parametrize(
    "regex, expected",
    [
        ("^A$|^B$", "A|B"),
        (r"\Aab\z", "ab"),
        ("^(a|b)$", "(a|b)"),
        (r"[|^]$|^x\$", r"[|^]|x\$"),
        ("(^a|b$)", "(^a|b$)"),  # anchors inside a group are left (and refused later)
    ],
)
def test_anchors_are_stripped_per_top_level_branch(regex, expected):
    assert strip_anchors(regex) == expected


def test_anchored_alternatives_compile_as_a_regex_and_as_a_pattern():
    assert spec_to_regex(GrammarSpec("regex", "^A$|^B$"))[0] == "A|B"
    schema = {"type": "object", "properties": {"x": {"type": "string", "pattern": "^a$|^b$"}}}
    regex = _regex({**schema, "required": ["x"]})
    assert re.fullmatch(regex, '{"x":"a"}') and re.fullmatch(regex, '{"x":"b"}')


def test_pattern_alternatives_stay_inside_the_quotes():
    # outlines spliced "a|b" as "a|b" between the quotes: '{"x":"a}' matched.
    schema = {"type": "object", "properties": {"x": {"type": "string", "pattern": "a|b"}}}
    regex = _regex({**schema, "required": ["x"]})
    assert re.fullmatch(regex, '{"x":"a"}') and not re.fullmatch(regex, '{"x":"a}')


def test_property_names_json_must_escape_are_refused_as_unsupported():
    schema = {"type": "object", "properties": {'say "hi"': {"type": "integer"}}}
    with pytest.raises(UnsupportedGrammarError, match="names JSON must escape"):
        _regex(schema)


def test_closed_objects_close_only_plain_objects_with_properties():
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"x": {"type": "integer"}}},
            "b": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "c": {"type": "object"},  # any object stays any object
            "d": {"anyOf": [{"properties": {"y": {}}}, {"type": "null"}]},  # a union
        },
        "enum": [{"properties": {}}],  # data
    }
    out = closed_objects(schema)
    assert out["additionalProperties"] is False
    props = out["properties"]
    assert props["a"]["additionalProperties"] is False
    assert props["b"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in props["c"]
    assert props["d"]["anyOf"][0]["additionalProperties"] is False
    assert out["enum"] == [{"properties": {}}]
    open_on_purpose = {"properties": {"a": {}}, "required": ["a", "b"]}  # b: an extra one
    assert closed_objects(open_on_purpose) == open_on_purpose
    for intersection in (
        {"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]},
        {"$ref": "#/$defs/x", "properties": {"b": {}}, "$defs": {"x": {"properties": {}}}},
    ):
        assert closed_objects(intersection) == intersection
