"""XGrammarBackend: the grammar-interface semantics every backend shares (exact masks, EOS,
rollback, copy, jump-forward, errors) on a hand-made vocabulary, random walks on GPT-2 and the
small SentencePiece vocabulary (EOS and rollback semantics: test_constrained_backends_common.py), and the evidence for ``EXACT_KEYWORDS``: per keyword, a schema
with an instance ``jsonschema`` accepts and one it rejects, consumed token by token (one token
per byte) — the valid one must be accepted in full, the invalid one refused. ``IGNORED_KEYWORDS``
and the combinations ``xgrammar_check`` reports are shown to be accepted wrongly by xgrammar
itself, so the backend must refuse or drop them."""

from __future__ import annotations

import json
import pickle
import re
import sys

import jsonschema
import pytest

from radixlm.constrained.base import GrammarSpec, UnsupportedGrammarError
from radixlm.constrained.outlines_backend import OutlinesBackend
from radixlm.constrained.schema_exact import find_unenforced
from radixlm.constrained.vocabulary import TokenVocabulary
from radixlm.errors import ConfigError, GrammarError
from radixlm.tokenizer import load_tokenizer

xgr = pytest.importorskip("xgrammar")
from radixlm.constrained.xgrammar_backend import (  # noqa: E402
    XGrammarBackend,
    xgrammar_available,
)
from radixlm.constrained.xgrammar_schema import (  # noqa: E402
    EXACT_KEYWORDS,
    FORMATS,
    IGNORED_KEYWORDS,
    XGRAMMAR_SUPPORT,
)
from tests.unit.constrained_helpers import (  # noqa: E402
    AB,
    ABC,
    CASES,
    COLON,
    D0,
    D1,
    D2,
    EOS,
    EOS2,
    EOS_IDS,
    GPT2_DIR,
    HAND_VOCAB_SIZE,
    LBRACE,
    PERSON,
    QUOTE,
    RBRACE,
    STORIES_DIR,
    TOKENS,
    A,
    allowed,
    check_walks,
    regex,
    walk,
)


@pytest.fixture(scope="module")
def hand() -> XGrammarBackend:
    vocab = TokenVocabulary(TOKENS, eos_token_ids=[EOS, EOS2])
    return XGrammarBackend.from_vocabulary(vocab, HAND_VOCAB_SIZE)


@pytest.fixture(scope="module")
def byte_backend() -> XGrammarBackend:
    """One token per byte (id = byte value), EOS 256: any text is exactly one tokenization."""
    vocab = TokenVocabulary([bytes([i]) for i in range(256)] + [None], eos_token_ids=[256])
    return XGrammarBackend.from_vocabulary(vocab, 264)


@pytest.fixture(scope="module")
def gpt2():
    tokenizer = load_tokenizer(GPT2_DIR)
    return tokenizer, XGrammarBackend(tokenizer, 50304, [tokenizer.eos_token_id])


@pytest.fixture(scope="module")
def stories() -> XGrammarBackend:
    tokenizer = load_tokenizer(STORIES_DIR)
    return XGrammarBackend(tokenizer, 512, [tokenizer.eos_token_id], max_depth=2)


def accepts(backend: XGrammarBackend, grammar, text: str) -> bool:
    """Whether the byte-vocabulary matcher takes ``text`` byte by byte and ends final."""
    m = grammar.matcher()
    return all(m.advance(b) for b in text.encode()) and m.is_final()


# --- exact masks on the hand-made vocabulary -------------------------------------------------


def test_advance_rejects_disallowed_tokens_without_moving(hand) -> None:
    m = hand.compile(regex(r'\{"a":[0-2]\}')).matcher()
    assert allowed(m, hand) == {LBRACE}
    for bad in (A, RBRACE, EOS, EOS2, 16, 39, 1000, -1):  # letters, EOS, padding, out of range
        assert not m.advance(bad)
    assert allowed(m, hand) == {LBRACE}
    for tok in (LBRACE, QUOTE, A, QUOTE, COLON):
        assert m.advance(tok)
    assert allowed(m, hand) == {D0, D1, D2}
    assert m.advance(D2) and allowed(m, hand) == {RBRACE}
    assert m.advance(RBRACE) and m.is_terminated() and allowed(m, hand) == EOS_IDS


def test_forced_bytes(hand) -> None:
    m = hand.compile(regex("abc[0-9]")).matcher()
    assert m.forced_bytes() == b"abc"
    assert allowed(m, hand) == {A, AB, ABC}  # a query, not an advance: any split is allowed
    m2 = hand.compile(regex(r'\{"a":[0-2]\}')).matcher()
    assert m2.forced_bytes() == b'{"a":'
    assert m2.advance(LBRACE) and m2.advance(QUOTE) and m2.forced_bytes() == b'a":'
    assert m2.advance(A) and m2.advance(QUOTE) and m2.advance(COLON) and m2.forced_bytes() == b""
    assert m2.advance(D1) and m2.forced_bytes() == b"}"
    assert m2.advance(RBRACE) and m2.forced_bytes() == b""  # terminated
    assert hand.compile(regex("a(bc)?")).matcher().forced_bytes() == b"a"  # stops when final


def test_dead_end_is_terminated_and_allows_eos(hand) -> None:
    m = hand.compile(regex("az")).matcher()  # no token spells "z"
    assert allowed(m, hand) == {A}
    assert m.advance(A) and not m.is_final()
    assert m.is_terminated() and allowed(m, hand) == EOS_IDS and m.forced_bytes() == b""
    assert m.advance(EOS) and m.is_terminated()


def test_no_bits_past_the_vocabulary(hand) -> None:
    mask = hand.allocate_mask(1)
    hand.compile(regex("a*")).matcher().fill_mask(mask, 0)  # final at once: EOS allowed too
    assert mask[0, 1].item() == 0  # ids 32..63: padding (16..39) and past vocab_size (40..63)
    assert allowed(hand.compile(regex("a*")).matcher(), hand) == {A} | EOS_IDS


@pytest.mark.parametrize(
    "pattern", ["(ab)+c?", r'\{"a":[0-2]\}', "(a|b)*c", "[0-2]{1,3}(\\.[0-2])?", "^ab$|^c$"]
)
def test_same_masks_as_outlines_along_walks(hand, pattern) -> None:
    """State by state, the same allowed sets as outlines-core (which allows any split too)."""
    outlines = OutlinesBackend.from_vocabulary(hand.vocab, HAND_VOCAB_SIZE)
    grammar = hand.compile(regex(pattern))
    for seed in range(4):
        ids = walk(hand, grammar, seed)
        m, o = grammar.matcher(), outlines.compile(regex(pattern)).matcher()
        for tok in ids:
            assert allowed(m, hand) == allowed(o, outlines)
            assert m.advance(tok) and o.advance(tok)
        assert m.is_terminated() == o.is_terminated()


# --- errors ---------------------------------------------------------------------------------

ERRORS = [
    (regex("(ab"), GrammarError, "not a valid regex"),
    (regex("a(?=b)"), GrammarError, "lookaround"),
    (regex("a$b"), GrammarError, "anchor"),
    (regex("a{,3}"), UnsupportedGrammarError, "xgrammar engine: .*repetition"),
    (regex(r"\p{L}+"), UnsupportedGrammarError, "Unicode character class"),
    (regex("a" * 262_145), GrammarError, "262145 characters, more than the limit of 262144"),
    (GrammarSpec("json_schema", '{"type":'), GrammarError, "not valid JSON"),
    (GrammarSpec("json_schema", '{"type": 5}'), GrammarError, "not a valid JSON Schema at type"),
    (GrammarSpec("json_schema", "[1]"), GrammarError, "must be a JSON object"),
    (
        GrammarSpec("json_schema", '{"type": "integer", "minimum": 2.5}'),
        UnsupportedGrammarError,
        "must be a whole number",
    ),
    (GrammarSpec("choices", "[]"), GrammarError, "non-empty JSON list of strings"),
    (GrammarSpec("dtype", "complex"), GrammarError, "unknown dtype 'complex'"),
    (GrammarSpec("lark", "start: x"), GrammarError, "unknown grammar kind 'lark'"),
    (GrammarSpec("ebnf", "start: ("), GrammarError, "invalid ebnf grammar"),
    (GrammarSpec("ebnf", "root ::= foo"), GrammarError, 'invalid ebnf grammar.*"foo"'),
]


@pytest.mark.parametrize(
    "spec, error, message", ERRORS, ids=[f"{s.kind}-{s.value[:12]}" for s, _, _ in ERRORS]
)
def test_bad_specs_raise_grammar_error(stories, spec, error, message) -> None:
    with pytest.raises(error, match=message) as info:
        stories.compile(spec)
    if error is GrammarError:  # an invalid spec: no other backend would take it either
        assert not isinstance(info.value, UnsupportedGrammarError)


def test_missing_package_is_a_config_error(monkeypatch) -> None:
    assert xgrammar_available()
    monkeypatch.setitem(sys.modules, "xgrammar", None)
    assert not xgrammar_available()
    with pytest.raises(ConfigError, match=r"pip install 'radixlm\[xgrammar\]'"):
        XGrammarBackend.from_vocabulary(TokenVocabulary(TOKENS, [EOS]), HAND_VOCAB_SIZE)


# --- real tokenizers ------------------------------------------------------------------------


def test_gpt2_json_schema_random_walks_validate(gpt2) -> None:
    tokenizer, backend = gpt2
    grammar = backend.compile(GrammarSpec("json_schema", json.dumps(PERSON)))
    for seed in range(3):
        ids = walk(backend, grammar, seed)
        text = backend.vocab.decode(ids).decode("utf-8")
        assert tokenizer.decode(ids) == text
        jsonschema.validate(json.loads(text), PERSON)
        assert not re.search(r"\s", re.sub(r'"(?:[^"\\]|\\.)*"', "", text))  # compact JSON


def test_gpt2_forced_bytes_follow_the_whitespace_pattern(gpt2) -> None:
    tokenizer, backend = gpt2
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    spec = GrammarSpec("json_schema", json.dumps(schema))
    brace, space = tokenizer.convert_tokens_to_ids("{"), tokenizer.convert_tokens_to_ids("Ġ")
    m = backend.compile(spec).matcher()  # compact: everything up to the value's quote
    assert m.forced_bytes() == b'{"name":"'
    assert m.advance(brace) and m.forced_bytes() == b'"name":"' and not m.copy().advance(space)
    loose = XGrammarBackend.from_vocabulary(backend.vocab, 50304, whitespace_pattern="[ ]?")
    assert loose.json_options() == {"any_whitespace": True, "max_whitespace_cnt": 1}
    m = loose.compile(spec).matcher()
    assert m.forced_bytes() == b"{"
    assert m.advance(brace) and m.advance(space) and not m.copy().advance(space)  # at most one


def test_artifact_pickles_and_loads_to_the_same_grammar(stories) -> None:
    artifact = stories.build(GrammarSpec("json_schema", json.dumps(PERSON)))
    again = stories.load(pickle.loads(pickle.dumps(artifact)))
    direct = stories.load(artifact)
    for seed in range(2):
        ids = walk(stories, direct, seed)
        m = again.matcher()
        for tok in ids:
            assert m.advance(tok)
        assert m.is_terminated()


# --- every kind, on the small SentencePiece vocabulary ---------------------------------------

EBNF_CASES = [
    (GrammarSpec("ebnf", 'root ::= "x" [0-9]+ ("-" [a-c])?'), r"x[0-9]+(-[a-c])?"),
    (GrammarSpec("ebnf", 'start: "x" DIGIT+\nDIGIT: /[0-9]/'), r"x[0-9]+"),  # Lark
]


@pytest.mark.parametrize("spec, check", CASES, ids=[f"{s.kind}-{s.value[:12]}" for s, _ in CASES])
def test_every_kind_walks_to_matching_output(stories, spec, check) -> None:
    check_walks(stories, spec, check, exact_advance=True)


@pytest.mark.parametrize("spec, pattern", EBNF_CASES, ids=["gbnf", "lark"])
def test_ebnf_walks_match(stories, spec, pattern) -> None:
    check_walks(stories, spec, lambda t: re.fullmatch(pattern, t), exact_advance=True)


# --- JSON Schema: what xgrammar enforces exactly (the evidence for EXACT_KEYWORDS) ------------

INT = {"type": "integer"}
O2 = {"a": INT, "b": {"type": "string"}}
KEYWORD_CASES = {  # keyword: (schema, an instance it accepts, one it rejects)
    "type": ({"type": ["integer", "null"]}, None, "x"),
    "enum": ({"enum": ["a", 1, None, [1], {"k": 2}]}, {"k": 2}, {"k": 3}),
    "const": ({"const": {"a": 'x"y'}}, {"a": 'x"y'}, {"a": "xy"}),
    "properties": ({"type": "object", "properties": O2}, {"a": 1, "b": "x"}, {"a": "1"}),
    "required": ({"type": "object", "properties": O2, "required": ["b"]}, {"b": ""}, {"a": 1}),
    "additionalProperties": (
        {"type": "object", "properties": O2, "additionalProperties": {"type": "boolean"}},
        {"a": 1, "z": True},
        {"a": 1, "z": 2},
    ),
    "maxProperties": (
        {"type": "object", "properties": O2, "maxProperties": 1},
        {"b": "x"},
        {"a": 1, "b": "x"},
    ),
    "propertyNames": (
        {"type": "object", "propertyNames": {"pattern": "^[a-c]+$"}, "additionalProperties": {}},
        {"ab": 1},
        {"ad": 1},
    ),
    "items": ({"type": "array", "items": {"type": "integer"}}, [1, 2], [1, "2"]),
    "prefixItems": (
        {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]},
        [1, "x", None],
        ["x", 1],
    ),
    "minItems": ({"type": "array", "items": {"type": "integer"}, "minItems": 2}, [1, 2], [1]),
    "maxItems": ({"type": "array", "items": {"type": "integer"}, "maxItems": 1}, [1], [1, 2]),
    "anyOf": ({"anyOf": [{"type": "integer", "minimum": 5}, {"type": "string"}]}, 7, 3),
    "$ref": (
        {
            "$defs": {
                "node": {
                    "type": "object",
                    "properties": {"k": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                }
            },
            "$ref": "#/$defs/node",
        },
        {"k": [{"k": []}]},
        {"k": [{"k": [1]}]},
    ),
    "minLength": ({"type": "string", "minLength": 2}, "éa", "é"),
    "maxLength": ({"type": "string", "maxLength": 2}, "éa", "abc"),
    "pattern": ({"type": "string", "pattern": "^[a-c]+-[0-9]{2}$"}, "ab-12", "ab-1"),
    "format": (
        {"type": "string", "format": "uuid"},
        "0a1b2c3d-4e5f-6789-abcd-ef0123456789",
        "0a1b",
    ),
    "minimum": ({"type": "number", "minimum": -1.5}, -1.5, -1.75),
    "maximum": ({"type": "integer", "maximum": 120}, 120, 121),
    "exclusiveMinimum": ({"type": "number", "exclusiveMinimum": 0}, 0.01, 0),
    "exclusiveMaximum": ({"type": "integer", "exclusiveMaximum": -3}, -4, -3),
    "multipleOf": ({"type": "integer", "multipleOf": 7}, 21, 22),
}
FORMAT_CASES = {
    "uuid": ("123e4567-e89b-12d3-a456-426614174000", "123e4567-e89b-12d3-a456"),
    "ipv6": ("fe80::1:2", "fe80::1::2"),
    "email": ("a.b@c.org", "a.b.c.org"),
}


# More cases for the same keywords (each: schema, valid instance, invalid instance).
MORE_CASES = [
    ({"type": "integer", "minimum": -5, "maximum": -3}, -4, -6),
    ({"type": "integer", "minimum": -5, "maximum": -3}, -3, -2),
    ({"type": "number", "exclusiveMaximum": 1.5}, 1.25, 1.5),
    ({"type": "number", "minimum": 0, "maximum": 1}, 0.001, 2),
    ({"type": "integer", "minimum": 0, "maximum": 100, "multipleOf": 7}, 14, 105),
    ({"type": ["string", "integer"], "minLength": 2, "minimum": 3}, "ab", 2),
    ({"type": ["string", "null"], "maxLength": 2}, None, "abc"),
    ({"type": "array", "items": {"type": "array", "items": INT, "minItems": 1}}, [[0]], [[]]),
    ({"type": "array", "prefixItems": [INT], "items": {"type": "string"}}, [1, "a"], [1, 2]),
    (
        {"type": "object", "propertyNames": {"enum": ["x", "y"]}, "additionalProperties": INT},
        {"x": 1},
        {"z": 1},
    ),
    (
        {"type": "object", "propertyNames": {"maxLength": 2}, "additionalProperties": INT},
        {"ab": 1},
        {"abc": 1},
    ),
    ({"enum": [{"a": [1, {"b": None}]}, "x"]}, {"a": [1, {"b": None}]}, {"a": [1, {"b": 0}]}),
    ({"anyOf": [{"type": "integer", "minimum": 5}, {"type": "integer", "maximum": 0}]}, -1, 3),
    ({"type": "string", "pattern": "^(a|bc)+$"}, "abca", "abcb"),
]


def _validator(schema):
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_keyword_cases_cover_exactly_the_allowlist() -> None:
    assert set(KEYWORD_CASES) == EXACT_KEYWORDS == XGRAMMAR_SUPPORT.exact
    assert set(FORMAT_CASES) == FORMATS == XGRAMMAR_SUPPORT.formats
    assert not EXACT_KEYWORDS & IGNORED_KEYWORDS


def _check_exact(backend, schema, good, bad, walks: int = 2) -> None:
    validator = _validator(schema)
    assert validator.is_valid(good) and not validator.is_valid(bad)  # the case is right
    assert not find_unenforced(schema, XGRAMMAR_SUPPORT)  # nothing reported, nothing dropped
    grammar = backend.compile(GrammarSpec("json_schema", json.dumps(schema)), "exact")
    compact = {"separators": (",", ":"), "ensure_ascii": False}
    assert accepts(backend, grammar, json.dumps(good, **compact))
    assert not accepts(backend, grammar, json.dumps(bad, **compact))
    for seed in range(walks):  # what the grammar generates validates too
        text = backend.vocab.decode(walk(backend, grammar, seed, free_steps=30)).decode()
        assert validator.is_valid(json.loads(text)), text


@pytest.mark.parametrize("keyword", sorted(KEYWORD_CASES))
def test_exact_keyword(byte_backend, keyword) -> None:
    _check_exact(byte_backend, *KEYWORD_CASES[keyword])


@pytest.mark.parametrize("schema, good, bad", MORE_CASES)
def test_exact_keyword_more_cases(byte_backend, schema, good, bad) -> None:
    _check_exact(byte_backend, schema, good, bad, walks=1)


@pytest.mark.parametrize("fmt", sorted(FORMAT_CASES))
def test_exact_format(byte_backend, fmt) -> None:
    # A random walk rarely finishes an email address (its grammar nests deep): no walks.
    walks = 0 if fmt == "email" else 2
    _check_exact(byte_backend, {"type": "string", "format": fmt}, *FORMAT_CASES[fmt], walks)


# --- what xgrammar drops silently: the backend must report it ---------------------------------


class Raw(str):
    """An instance given as its JSON text (to write what ``json.dumps`` cannot: duplicate keys,
    raw control characters)."""


def _text(instance) -> str:
    return instance if isinstance(instance, Raw) else json.dumps(instance, separators=(",", ":"))


IGNORED_CASES = {  # keyword: (schema, an instance jsonschema rejects and raw xgrammar accepts)
    "allOf": ({"allOf": [{**INT, "minimum": 3}, {**INT, "maximum": 5}]}, 9),
    "oneOf": ({"oneOf": [{**INT, "minimum": 0}, {**INT, "maximum": 10}]}, 5),
    "not": ({**INT, "not": {"const": 3}}, 3),
    "if": ({**INT, "if": {"minimum": 5}, "then": {"multipleOf": 2}}, 7),
    "then": ({**INT, "if": {"minimum": 5}, "then": {"multipleOf": 2}}, 7),
    "else": ({**INT, "if": {"minimum": 5}, "else": {"const": 0}}, 3),
    "uniqueItems": ({"type": "array", "items": INT, "uniqueItems": True}, [1, 1]),
    "contains": ({"type": "array", "items": INT, "contains": {"const": 5}}, [1]),
    "minContains": ({"type": "array", "contains": {"const": 1}, "minContains": 2}, [1, 2]),
    "maxContains": ({"type": "array", "contains": {"const": 1}, "maxContains": 1}, [1, 1]),
    "dependentRequired": (
        {"type": "object", "properties": {"a": INT, "b": INT}, "dependentRequired": {"a": ["b"]}},
        {"a": 1},
    ),
    "dependentSchemas": (
        {
            "type": "object",
            "properties": {"a": INT, "b": INT},
            "dependentSchemas": {"a": {"required": ["b"]}},
        },
        {"a": 1},
    ),
    "dependencies": (
        {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {"a": INT, "b": INT},
            "dependencies": {"a": {"required": ["b"]}},
        },
        {"a": 1},
    ),
    "unevaluatedProperties": (
        {"type": "object", "properties": {"a": INT}, "unevaluatedProperties": False},
        {"a": 1, "b": 2},
    ),
    "minProperties": (  # duplicate keys count: json.loads keeps one
        {"type": "object", "additionalProperties": INT, "minProperties": 2},
        Raw('{"x":1,"x":2}'),
    ),
}
# Combinations of allowlisted keywords xgrammar gets wrong (``xgrammar_check`` reports them).
CHECK_CASES = [
    (  # the same property on both sides: no union of keywords expresses it
        {
            "type": "object",
            "properties": {"a": INT},
            "anyOf": [{"properties": {"a": {"minimum": 3}}}],
        },
        {"a": 1},
        "anyOf",
    ),
    ({"$defs": {"p": INT}, "$ref": "#/$defs/p", "minimum": 3}, 2, "$ref"),
    ({"minimum": 3}, 2, "minimum"),
    ({"type": "number", "multipleOf": 0.5}, 1.2, "multipleOf"),
    ({"type": "object", "properties": {"a": INT}, "required": ["z"]}, {"a": 1}, "required"),
    ({"type": "string", "pattern": "^(?!x)[a-z]+$"}, "xy", "pattern"),
    ({"type": "string", "pattern": "^[a-z]+$", "maxLength": 2}, "abc", "pattern"),
]


def _raw_accepts(schema, instance) -> bool:
    """xgrammar on its own (no rewrite, no report) over a one-byte-per-token vocabulary."""
    info = xgr.TokenizerInfo([bytes([i]) for i in range(256)], vocab_size=257, stop_token_ids=[256])
    compiled = xgr.GrammarCompiler(info).compile_json_schema(
        json.dumps(schema), any_whitespace=False, separators=(",", ":"), strict_mode=False
    )
    m = xgr.GrammarMatcher(compiled)
    return m.accept_string(_text(instance)) and m.is_completed()


def test_ignored_cases_cover_the_list() -> None:
    assert set(IGNORED_CASES) == IGNORED_KEYWORDS


# normalize() rewrites the array form of dependencies into an allOf, which is what is reported.
REPORTED_AS = {"dependentRequired": "allOf"}


@pytest.mark.parametrize(
    "schema, instance, keyword",
    [(s, i, REPORTED_AS.get(k, k)) for k, (s, i) in IGNORED_CASES.items()] + CHECK_CASES,
    ids=[*IGNORED_CASES, *(f"check-{k}-{n}" for n, (_, _, k) in enumerate(CHECK_CASES))],
)
def test_dropped_keywords_are_reported(byte_backend, schema, instance, keyword) -> None:
    assert not _validator(schema).is_valid(json.loads(_text(instance)))
    assert _raw_accepts(schema, instance)  # xgrammar itself accepts the invalid instance
    spec = GrammarSpec("json_schema", json.dumps(schema))
    with pytest.raises(UnsupportedGrammarError, match=re.escape(keyword)):
        byte_backend.compile(spec, "exact")
    with pytest.raises(GrammarError, match="cannot enforce"):
        byte_backend.compile(spec, "reject")
    grammar = byte_backend.compile(spec, "ignore")  # decoded best-effort, and reported
    assert keyword in {u.keyword for u in grammar.unenforced}


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "minLength": 2},
        {"type": "string", "maxLength": 3},
        {"type": "object", "propertyNames": {"maxLength": 3}, "additionalProperties": INT},
    ],
)
def test_length_bounds_keep_strings_valid_json(byte_backend, schema) -> None:
    """xgrammar's length-bounded strings take raw control characters (invalid JSON); the backend
    never allows a token with one in JSON (but the layout's whitespace)."""
    bad = Raw('"\x01a"') if schema["type"] == "string" else Raw('{"\x01a":1}')
    assert _raw_accepts(schema, bad)
    grammar = byte_backend.compile(GrammarSpec("json_schema", json.dumps(schema)), "exact")
    assert not accepts(byte_backend, grammar, bad)
    good = '"ab"' if schema["type"] == "string" else '{"ab":1}'
    assert accepts(byte_backend, grammar, good)


DISTRIBUTED = [  # (schema, valid instances, invalid instances): anyOf/oneOf with siblings
    ({"type": "integer", "anyOf": [{"minimum": 5}, {"maximum": 0}]}, [6, -1], [3, "x"]),
    (
        {
            "type": "object",
            "properties": {"a": INT, "b": INT},
            "anyOf": [{"required": ["a"]}, {"required": ["b"]}],
        },
        [{"a": 1}, {"b": 2}, {"a": 1, "b": 2}],
        [{}, {"a": "x"}],
    ),
    (
        {
            "type": "object",
            "oneOf": [
                {"properties": {"lock": {"type": "string"}}, "required": ["lock"]},
                {"properties": {"error": {"type": "string"}}, "required": ["error"]},
            ],
        },
        [{"lock": "x"}, {"error": "y"}],
        [{}, {"lock": 1}],
    ),
]


@pytest.mark.parametrize("schema, valid, invalid", DISTRIBUTED)
def test_siblings_of_any_of_are_distributed_into_the_branches(
    byte_backend, schema, valid, invalid
) -> None:
    """xgrammar reads an anyOf alone; ``distribute`` moves its siblings into every branch."""
    if "anyOf" in schema:  # xgrammar alone ignores the siblings (its oneOf is an anyOf)
        assert any(_raw_accepts(schema, bad) for bad in invalid)
    validator = _validator(schema)
    # A oneOf not provably disjoint is dropped to an anyOf ("ignore"), no more refused as a whole.
    policy = "ignore" if "oneOf" in schema else "exact"
    grammar = byte_backend.compile(GrammarSpec("json_schema", json.dumps(schema)), policy)
    for good in valid:
        assert validator.is_valid(good) and accepts(byte_backend, grammar, _text(good))
    for bad in invalid:
        assert not validator.is_valid(bad) and not accepts(byte_backend, grammar, _text(bad))


def test_no_utf8_encoded_surrogates(byte_backend) -> None:
    """xgrammar lets 0xED 0xA0..0xBF (a surrogate: invalid UTF-8) into strings and regex classes;
    the backend allows no byte 0xA0..0xBF right after 0xED."""
    info = xgr.TokenizerInfo([bytes([i]) for i in range(256)], vocab_size=257, stop_token_ids=[256])
    raw = xgr.GrammarMatcher(xgr.GrammarCompiler(info).compile_regex('"[^a]*"'))
    assert raw.accept_string(b'"\xed\xa0\x80"')
    for spec in (regex('"[^a]*"'), GrammarSpec("json_schema", '{"type": "string"}')):
        m = byte_backend.compile(spec).matcher()
        assert m.advance(ord('"')) and m.advance(0xED)
        assert not allowed(m, byte_backend) & set(range(0xA0, 0xC0)) and not m.advance(0xA0)
        assert set(range(0x80, 0xA0)) <= allowed(m, byte_backend) and m.advance(0x9F)


def test_json_masks_allow_control_characters_only_as_layout_whitespace(gpt2) -> None:
    tokenizer, backend = gpt2
    newline = tokenizer.convert_tokens_to_ids("Ċ")  # "\n"
    spec = GrammarSpec("json_schema", json.dumps({"type": "object", "additionalProperties": INT}))
    brace = tokenizer.convert_tokens_to_ids("{")
    compact = backend.compile(spec).matcher()
    assert compact.advance(brace) and newline not in allowed(compact, backend)
    assert not compact.advance(newline)
    loose = XGrammarBackend.from_vocabulary(backend.vocab, 50304, whitespace_pattern="[ \n]*")
    m = loose.compile(spec).matcher()
    assert m.advance(brace) and newline in allowed(m, loose) and m.advance(newline)
    text = regex("a\nb")  # other kinds are not JSON: a newline is whatever the grammar says
    m = backend.compile(text).matcher()
    assert m.advance(tokenizer.convert_tokens_to_ids("a")) and m.advance(newline)
