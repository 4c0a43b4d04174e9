"""A bounded fuzz of the three generation routes from their published ``/openapi.json``.

Request bodies are generated from each route's request schema (``schema_strategies``), sent
to the session server as they are ("valid": what the schema allows, which may still break a
rule across fields or exceed the model's vocabulary) or mutated (a field dropped or retyped,
an unknown field, a nested value replaced, other JSON, malformed bytes). Every reply must keep
the contract (``api_check``): never a 5xx, a 4xx is a JSON error with a message, a 200 (JSON
or SSE) validates against the response models and the published schemas. Valid bodies must
also validate against the pydantic request models (the schema and the models agree).

Bounded: generation is capped at 4 new tokens and ``n <= 2`` (the caps are applied to the
generated values, not to the contract); ``derandomize`` makes the runs the same every time.

The 5xx it found (float32-overflowing sampling values, an echo of out-of-vocabulary ids,
ignored field names unfit for a header, a non-string model) are fixed, each with a regression
test in tests/server/test_hardening.py; nothing is kept out of the generated bodies.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from radixlm.server.api_models import REQUEST_MODELS
from tests.server.api_check import CMPL, GEN, ROUTES, Contract, send
from tests.server.schema_strategies import SchemaStrategies, mutate

EXAMPLES = 300  # per route and mode: 1,800 requests, ~60-90 s on a loaded 2-core machine
MAX_NEW = 4
MAX_N = 2
VOCAB = 512  # the bundled model's


@pytest.fixture(scope="module")
def contract(server) -> Contract:
    status, doc = server.get("/openapi.json")
    assert status == 200
    return Contract(doc)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _cap(d: Any, tokens: str) -> Any:
    """``d`` (a dict of sampling fields, else unchanged) with at most MAX_NEW new tokens and
    MAX_N samples: an absent or null token limit becomes MAX_NEW, a larger number MAX_NEW;
    values of other types stay (they test the checks)."""
    if d is None and tokens == "max_new_tokens":
        return {tokens: MAX_NEW}
    if not isinstance(d, dict):
        return d
    d = dict(d)
    if d.get(tokens) is None or (_number(d[tokens]) and d[tokens] > MAX_NEW):
        d[tokens] = MAX_NEW
    if _number(d.get("n")) and d["n"] > MAX_N:
        d["n"] = MAX_N
    if _number(d.get("best_of")) and d["best_of"] > MAX_N:
        d["best_of"] = MAX_N
    return d


def bounded(route: str, body: Any) -> Any:
    """The caps on generation (they keep each request cheap; the contract has no such caps)."""
    if not isinstance(body, dict):
        return body
    if route != GEN:
        body = _cap(body, "max_tokens")
        if _number(body.get("max_completion_tokens")):
            body["max_completion_tokens"] = min(body["max_completion_tokens"], MAX_NEW)
        return body
    sp = body.get("sampling_params")
    sp = (
        [_cap(x, "max_new_tokens") for x in sp]
        if isinstance(sp, list)
        else _cap(sp, "max_new_tokens")
    )
    return {**body, "sampling_params": sp}


def servable(route: str, body: dict[str, Any]) -> dict[str, Any]:
    """A valid body nudged towards a 200: one prompt field on ``/generate``, and token ids
    inside the vocabulary (so the fuzz reaches generation, not only the checks before it)."""

    def ids(x: Any) -> Any:
        if isinstance(x, list):
            return [ids(v) for v in x]
        return x % VOCAB if isinstance(x, int) and not isinstance(x, bool) else x

    key = "prompt" if route == CMPL else "input_ids"
    body = {**body, key: ids(body[key])} if key in body else dict(body)
    if route == GEN:
        if body.get("text") is not None and body.get("input_ids") is not None:
            del body["input_ids"]
        elif body.get("text") is None and body.get("input_ids") is None:
            body["text"] = "Once upon a time"
    return body


# ---- the fuzz ------------------------------------------------------------------------------
def _encode(body: Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


@pytest.mark.parametrize("mode", ["valid", "mutated"])
@pytest.mark.parametrize("route", ROUTES)
def test_fuzz_route_keeps_the_contract(server, contract, route, mode):
    bodies = SchemaStrategies(contract.doc).from_schema(contract.request_schema(route))
    model = REQUEST_MODELS[route]
    outcomes: dict[str, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        body = data.draw(bodies, label="body")
        contract.check_request(route, body)  # the generator makes what the schema allows
        model.model_validate_json(json.dumps(body))  # the models say what the schema says
        if mode == "valid":
            body = servable(route, body)
            if data.draw(st.integers(0, 3), label="stream") == 0:  # streams more often
                body["stream"] = True
        else:
            body = data.draw(mutate(body), label="mutated")
        raw = _encode(bounded(route, body))
        try:
            reply = send(server.url, route, raw, timeout=60)
        except OSError as e:  # e.g. the server closed the connection without a response
            raise AssertionError(f"{route}: no response ({e!r}) to {raw[:300]!r}") from e
        kind = contract.check(route, reply)
        outcomes[kind] = outcomes.get(kind, 0) + 1

    start = time.monotonic()
    fuzz()
    print(f"{route} {mode}: {outcomes} in {time.monotonic() - start:.1f} s")
    if mode == "valid":  # the fuzz reached generation, not only the checks before it
        assert outcomes.get("ok", 0) + outcomes.get("stream", 0) >= EXAMPLES // 10, outcomes
    assert server.get("/health")[0] == 200
