"""JSON-schema keyword support: which keywords are reported as unenforceable, and how schema
``pattern``s are narrowed so that every match is valid raw JSON string content."""

from __future__ import annotations

import json
import re

import pytest

from radixlm.constrained.schema_support import (
    json_safe_pattern,
    unenforced_keywords,
    with_json_safe_patterns,
)


def test_unenforced_keywords_are_found_with_paths():
    schema = {
        "type": "object",
        "properties": {
            "age": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "uniqueItems": True, "items": {"type": "string"}},
            "minimum": {"type": "string"},  # a property *named* minimum is fine
        },
        "$defs": {"x": {"not": {"type": "null"}}},
        "enum": [{"maximum": 3}],  # data, not a keyword
    }
    assert sorted(unenforced_keywords(schema)) == [
        "/$defs/x: not",
        "/properties/age: minimum",
        "/properties/tags: uniqueItems",
    ]
    assert unenforced_keywords({"type": "string", "format": "hostname"}) == []


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
