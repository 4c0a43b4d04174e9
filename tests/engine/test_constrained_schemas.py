"""60 real JSONSchemaBench schemas: every output that completes validates against its schema —
with a random-weight model and with stories260K, greedy and sampled (temperature 1), on the
outlines, auto and llguidance grammar backends (the last on a third of them)."""

from __future__ import annotations

import json
import os

import jsonschema
import pytest

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "jsonschemabench")
SCHEMAS = sorted(f for f in os.listdir(FIXTURES) if f.endswith(".json"))


def _load(name: str) -> dict:
    with open(os.path.join(FIXTURES, name)) as f:
        return json.load(f)


@pytest.mark.parametrize(
    "model, temperature, backend",
    [
        ("stories", 0.0, "outlines"),  # every schema on outlines-core alone
        ("stories", 1.0, "auto"),  # the default: outlines-core, llguidance for the slow ones
        ("qwen2", 0.0, "auto"),
        ("qwen2", 1.0, "auto"),
    ],
)
def test_real_schemas_validate(make_engine, tiny_models, model, temperature, backend):
    assert len(SCHEMAS) >= 50
    model_path = None if model == "stories" else tiny_models[model]
    engine = make_engine(model_path, grammar_backend=backend)
    _check_schemas(engine, SCHEMAS, temperature)


def test_real_schemas_validate_with_llguidance(make_engine):
    pytest.importorskip("llguidance")
    engine = make_engine(grammar_backend="llguidance")
    _check_schemas(engine, SCHEMAS[::3], 1.0)


def _check_schemas(engine, names: list[str], temperature: float) -> None:
    schemas = [_load(n) for n in names]
    params = [
        {"json_schema": json.dumps(s), "temperature": temperature, "max_new_tokens": 160,
         "sampling_seed": i}
        for i, s in enumerate(schemas)
    ]  # fmt: skip
    results = engine.generate(["Here is the JSON object:\n"] * len(schemas), params)
    completed = 0
    for name, schema, r in zip(names, schemas, results):
        reason = r["meta_info"]["finish_reason"]["type"]
        assert reason in ("stop", "length"), (name, r["meta_info"])
        if reason == "length":
            continue  # cut by max_new_tokens: allowed to be incomplete
        completed += 1
        instance = json.loads(r["text"])
        jsonschema.validators.validator_for(schema)(schema).validate(instance)
    assert completed >= len(schemas) // 4, f"only {completed} outputs completed"
