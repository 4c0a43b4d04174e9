"""Shared by the grammar backend tests: a hand-made vocabulary, mask reading, random walks,
and one spec of every kind with a check of its outputs."""

from __future__ import annotations

import json
import os
import random
import re

import jsonschema
import numpy as np
import pytest

from radixlm.constrained.base import GrammarBackend, GrammarSpec
from radixlm.constrained.specs import DTYPE_REGEXES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GPT2_DIR = os.path.join(ROOT, "tests", "fixtures", "gpt2")
STORIES_DIR = os.path.join(ROOT, "radixlm", "assets", "stories260K")

# Hand-made vocabulary: ids 10 and 15 are EOS, 16..39 are padding rows of the "model".
TOKENS = [b"a", b"b", b"ab", b"{", b"}", b'"', b":", b"0", b"1", b"2"]
TOKENS += [None, b"c", b".", b"1.", b"abc", None]
A, B, AB, LBRACE, RBRACE, QUOTE, COLON, D0, D1, D2, EOS, C, DOT, ONE_DOT, ABC, EOS2 = range(16)
EOS_IDS = {EOS, EOS2}
HAND_VOCAB_SIZE = 40


def regex(value: str) -> GrammarSpec:
    return GrammarSpec("regex", value)


def allowed(matcher, backend: GrammarBackend) -> set[int]:
    """Ids whose bit is set in the matcher's mask row."""
    mask = backend.allocate_mask(1)
    mask.zero_()
    matcher.fill_mask(mask, 0)
    bits = np.unpackbits(mask[0].numpy().view(np.uint8), bitorder="little")  # bit j = token j
    return set(np.flatnonzero(bits).tolist())


_CLOSERS: dict[int, tuple[set[int], set[int]]] = {}


def _closing(backend: GrammarBackend, ids: list[int]) -> list[int]:
    """Tokens that tend to finish the output: closers first, then short plain tokens."""
    if id(backend) not in _CLOSERS:  # classify the vocabulary once per backend
        closers, short = set(), set()
        for i, b in enumerate(backend.vocab.token_bytes):
            if b and set(b) <= set(b'"}]'):
                closers.add(i)
            elif b and len(b) <= 2 and not set(b) & set(b",[{"):
                short.add(i)
        _CLOSERS[id(backend)] = (closers, short)
    closers, short = _CLOSERS[id(backend)]
    return [i for i in ids if i in closers] or [i for i in ids if i in short] or ids


def walk(
    backend: GrammarBackend, grammar, seed: int, free_steps: int = 60, exact_advance: bool = True
) -> list[int]:
    """Sample allowed tokens (uniformly, then preferring closers) until terminated.

    ``exact_advance``: ``advance`` accepts exactly the masked tokens (False: at least them, as
    llguidance, whose masks offer forced text only in its canonical tokenization)."""
    rng = random.Random(seed)
    m = grammar.matcher()
    out: list[int] = []
    eos = set(backend.eos_token_ids)
    for step in range(600):
        if m.is_terminated():
            return out
        ids = sorted(allowed(m, backend))
        assert ids, "a non-terminated state must allow something"
        assert max(set(ids) - eos, default=0) < backend.limit  # no padding ids
        if m.is_final():
            assert eos <= set(ids)
        else:
            assert not eos & set(ids)
        real = [i for i in ids if i not in eos]
        if m.is_final() and (not real or rng.random() < 0.3):
            assert m.advance(rng.choice(sorted(eos)))
            continue
        banned = rng.randrange(backend.vocab_size)
        accepted = m.copy().advance(banned)  # the mask agrees with advance
        assert accepted == (banned in ids) if exact_advance else accepted >= (banned in ids)
        pick = rng.choice(real if step < free_steps else _closing(backend, real))
        assert m.advance(pick)
        out.append(pick)
    raise AssertionError("walk did not terminate")


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age"],
}


SCHEMA = {
    "type": "object",
    "properties": {"id": {"type": "integer"}, "tag": {"enum": ["red", "green"]}},
    "required": ["id", "tag"],
}
CHOICES = ["yes", "yes please", "no"]


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _check_json_object(text: str) -> None:
    value = json.loads(text)
    assert isinstance(value, dict) and _depth(value) <= 2


CASES = [
    (regex(r"[a-c]{2,4}-(x|yz)"), lambda t: re.fullmatch(r"[a-c]{2,4}-(x|yz)", t)),
    (
        GrammarSpec("json_schema", json.dumps(SCHEMA)),
        lambda t: jsonschema.validate(json.loads(t), SCHEMA),
    ),
    (GrammarSpec("json_object", ""), _check_json_object),
    (GrammarSpec("choices", json.dumps(CHOICES)), lambda t: t in CHOICES or pytest.fail(t)),
    *[
        (GrammarSpec("dtype", name), lambda t, p=pattern: re.fullmatch(p, t))
        for name, pattern in DTYPE_REGEXES.items()
    ],
]


def check_walks(backend: GrammarBackend, spec: GrammarSpec, check, exact_advance: bool) -> None:
    """Four random walks of ``spec``: every output passes ``check`` (and a dtype's own regex), and
    the outputs differ unless the spec is a choice."""
    grammar = backend.compile(spec)
    seen = set()
    for seed in range(4):
        ids = walk(backend, grammar, seed, exact_advance=exact_advance)
        text = backend.vocab.decode(ids).decode("utf-8")
        assert check(text) is not False, text
        if spec.kind == "dtype" and spec.value != "str":
            assert re.fullmatch(DTYPE_REGEXES[spec.value], text), text
        seen.add(text)
    assert len(seen) > 1 or spec.kind == "choices"
