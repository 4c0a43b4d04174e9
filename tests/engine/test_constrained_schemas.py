"""Real JSONSchemaBench schemas (every fourth fixture, all six splits), greedy: on the default
``auto`` backend with a tiny Qwen2 (another tokenizer and architecture than
test_constrained_real_schemas.py), and on ``--grammar-backend outlines`` alone, where a schema
outlines-core cannot enforce exactly (or that is over its size guards) is refused with a 400
that says why, never decoded into an output that breaks it."""

from __future__ import annotations

import json

import jsonschema
import pytest

from radixlm.errors import RequestError
from tests.engine.test_constrained_real_schemas import SCHEMAS, _load

SAMPLE = SCHEMAS[::6]


def _generate_each(engine, texts: list[str]) -> list[dict | RequestError]:
    """Greedy, one streamed request per schema, all in flight together (one batch); each its
    final result or the ``RequestError`` that refused it."""
    streams: list = []
    for text in texts:
        sp = {"json_schema": text, "temperature": 0, "max_new_tokens": 128}
        try:
            streams.append(engine.generate("Here is the JSON object:\n", sp, stream=True))
        except RequestError as e:
            streams.append(e)
    results = []
    for s in streams:
        last = s
        if not isinstance(s, RequestError):
            try:
                for last in s:  # noqa: B007 (the final chunk is the result)
                    pass
            except RequestError as e:
                last = e
        results.append(last)
    return results


@pytest.mark.parametrize("model, backend", [("qwen2", "auto"), ("stories", "outlines")])
def test_real_schemas_validate_or_are_refused(make_engine, tiny_models, model, backend):
    assert len(SAMPLE) >= 35
    model_path = None if model == "stories" else tiny_models[model]
    engine = make_engine(model_path, grammar_backend=backend)
    completed = refused = 0
    texts = [_load(name) for name in SAMPLE]
    for name, text, r in zip(SAMPLE, texts, _generate_each(engine, texts)):
        if isinstance(r, RequestError):
            assert backend == "outlines" and r.http_status == 400, (name, r)
            refused += 1
            continue
        report = r["meta_info"]["constraint"]
        if r["meta_info"]["finish_reason"]["type"] != "stop":
            assert report["valid"] is None
            continue
        completed += 1
        schema = json.loads(text)
        cls = jsonschema.validators.validator_for(schema)
        ok = cls(schema, format_checker=cls.FORMAT_CHECKER).is_valid(json.loads(r["text"]))
        assert report["valid"] is ok, (name, report, r["text"])
        assert ok or report["unenforced"], (name, report, r["text"])  # invalid only if flagged
    assert completed >= len(SAMPLE) // 4, f"only {completed} outputs completed"
    assert backend == "outlines" or refused == 0
