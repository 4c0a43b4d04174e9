"""Every real JSONSchemaBench fixture (the 60 old ones and the seeded, unfiltered sample of
``bench/make_schema_fixtures.py``), sampled at temperature 0.9 on the default grammar backend
(``auto``) by stories260K and by a random-weight Llama over the GPT-2 vocabulary.

The promise under test (``meta_info["constraint"]``): every finished output the engine reports
as valid really validates against the user's schema (``jsonschema``, formats checked), and no
invalid output goes unflagged; an output cut by ``max_new_tokens`` is not judged (``valid`` None,
with a reason). Keywords no backend enforces are dropped and listed in ``unenforced``, so a
completed output may be invalid, but then it is reported ``valid: False`` with an error.

Each schema is its own streamed request, all submitted before any is read: they decode in one
batch, and a schema the engine refuses (a ``RequestError``) fails only its own request.
Refusals are counted and must stay under 5 % of the sample.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter

import jsonschema
import pytest

from radixlm.errors import RequestError

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "jsonschemabench")
GPT2_DIR = os.path.join(os.path.dirname(__file__), "..", "fixtures", "gpt2")
SCHEMAS = sorted(f for f in os.listdir(FIXTURES) if f.endswith(".json"))
PROMPT = "Here is the JSON object:\n"
TEMPERATURE = 0.9
MAX_NEW_TOKENS = 200
MAX_REFUSED_SHARE = 0.05
# model -> (logit bias on the tokens that close a JSON string / value / container, least share
# of the outputs that must complete). stories260K samples as trained. The random-weight model's
# next token is near uniform over 50257 ids, of which few close a string: unbiased, most of its
# outputs are cut at 200 tokens (measured 26 % completed), so it is nudged the way a model that
# writes JSON would be. Measured shares: see the summary a run prints (pytest -s).
MODELS = {"stories260K": (0.0, 0.35), "gpt2_random": (7.0, 0.6)}
CLOSERS = ('"', '",', '"}', '"]', ",", "}", "]")
BACKENDS = {"llguidance", "outlines"}


@pytest.fixture(scope="session")
def gpt2_random_model(tmp_path_factory) -> str:
    """A 2-layer random-weight Llama over the 50257-token GPT-2 vocabulary, with its tokenizer."""
    import torch
    import transformers

    path = str(tmp_path_factory.mktemp("gpt2_random_llama"))
    with open(os.path.join(GPT2_DIR, "tokenizer_config.json")) as f:
        assert json.load(f)["eos_token"] == "<|endoftext|>"
    config = transformers.LlamaConfig(
        vocab_size=50257,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=50256,
        eos_token_id=50256,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(path)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(GPT2_DIR, f), path)
    return path


@pytest.fixture
def one_torch_thread():
    """``num_threads=1`` sets torch's process-wide thread count: give the old one back."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _load(name: str) -> str:
    with open(os.path.join(FIXTURES, name)) as f:
        return f.read()


def _own_verdict(schema: dict, text: str) -> tuple[bool | None, str]:
    """(valid, why) by ``jsonschema`` here; None when the schema itself cannot be checked."""
    try:
        cls = jsonschema.validators.validator_for(schema)
        validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    except Exception as e:  # noqa: BLE001
        return None, f"validator: {type(e).__name__}: {e}"
    try:
        instance = json.loads(text)
    except ValueError as e:
        return False, f"not JSON: {e}"
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    return (True, "") if error is None else (False, f"{list(error.absolute_path)}: {error.message}")


def _closer_bias(tokenizer, bias: float) -> dict[str, float]:
    """``logit_bias`` raising every token whose text is one of ``CLOSERS``."""
    if not bias:
        return {}
    ids = [i for i in range(len(tokenizer)) if tokenizer.decode([i]) in CLOSERS]
    assert ids, "no closing token in the vocabulary"
    return {str(i): bias for i in ids}


def _generate_each(engine, texts: list[str], logit_bias: dict) -> list[dict | RequestError]:
    """One streamed request per schema, all in flight together; each its final result or the
    ``RequestError`` that refused it."""
    streams: list = []
    for i, text in enumerate(texts):
        params = {
            "json_schema": text,
            "temperature": TEMPERATURE,
            "max_new_tokens": MAX_NEW_TOKENS,
            "sampling_seed": i,
            "logit_bias": logit_bias,
        }
        try:
            streams.append(engine.generate(PROMPT, params, stream=True))
        except RequestError as e:  # refused while being validated
            streams.append(e)
    results: list[dict | RequestError] = []
    for s in streams:
        if isinstance(s, RequestError):
            results.append(s)
            continue
        last: dict | RequestError | None = None
        try:
            for chunk in s:
                last = chunk
        except RequestError as e:  # refused when its grammar compiled
            last = e
        results.append(last)
    return results


@pytest.mark.parametrize("model", list(MODELS))
def test_reported_validity_matches_jsonschema(one_torch_thread, make_engine, request, model):
    assert len(SCHEMAS) >= 200
    model_path = None if model == "stories260K" else request.getfixturevalue("gpt2_random_model")
    # One torch thread: the models are tiny, and the engine's grammar compile workers need the
    # other core of a 2-core box (oversubscribed OpenMP threads slow small ops by 10x+).
    engine = make_engine(model_path, num_threads=1)
    bias, min_completed = MODELS[model]
    texts = [_load(n) for n in SCHEMAS]
    results = _generate_each(engine, texts, _closer_bias(engine.tokenizer, bias))

    counts: Counter = Counter()
    problems: list[str] = []
    refused: list[str] = []
    flagged: list[str] = []
    for name, text, r in zip(SCHEMAS, texts, results):
        if isinstance(r, RequestError):
            assert r.http_status == 400, (name, r)
            refused.append(f"{name}: {r}")
            continue
        assert r is not None, f"{name}: the stream yielded nothing"
        meta = r["meta_info"]
        reason = (meta.get("finish_reason") or {}).get("type")
        assert reason in ("stop", "length"), (name, meta)
        c = meta.get("constraint")
        assert c is not None, f"{name}: no meta_info['constraint']: {meta}"
        assert c["kind"] in ("json_schema", "json_object"), (name, c)
        assert c["backend"] in BACKENDS, (name, c)
        assert all(set(u) >= {"pointer", "keyword"} for u in c["unenforced"]), (name, c)
        counts[c["backend"]] += 1
        if c["unenforced"]:
            counts["with unenforced keywords"] += 1
        if c["valid"] is False and not (isinstance(c["error"], str) and c["error"]):
            problems.append(f"{name}: reported invalid without an error: {c}")
        if reason == "length":
            counts["cut (length)"] += 1
            if c["valid"] is not None or not c["error"]:
                problems.append(f"{name}: cut output judged {c} | {r['text']!r}")
            continue
        counts["completed (stop)"] += 1
        ours, why = _own_verdict(json.loads(text), r["text"])
        if ours is None:
            counts["schema not checkable"] += 1
            if c["valid"] is True:
                problems.append(f"{name}: reported valid, but the schema cannot be checked ({why})")
            continue
        if c["valid"] is True:
            counts["valid"] += 1
        elif c["valid"] is False:
            counts["flagged invalid"] += 1
            flagged.append(f"{name}: {c['error']} (unenforced {c['unenforced']}) | {r['text']!r}")
            if not c["unenforced"]:
                counts["flagged invalid, nothing unenforced"] += 1
        if c["valid"] is not ours:
            problems.append(
                f"{name}: reported valid={c['valid']} (error {c['error']!r}), jsonschema says "
                f"{ours} ({why}); unenforced {c['unenforced']} | output {r['text']!r}"
            )

    n = len(SCHEMAS)
    summary = f"{model}: {n} schemas, refused {len(refused)}, " + ", ".join(
        f"{k} {v}" for k, v in sorted(counts.items())
    )
    print("\n" + summary)
    for line in refused:
        print("  refused", line[:300])
    for line in flagged:
        print("  flagged", line[:500])
    assert not problems, summary + "\n" + "\n".join(problems)
    assert len(refused) < MAX_REFUSED_SHARE * n, summary + "\n" + "\n".join(refused)
    done = counts["completed (stop)"]
    assert done >= min_completed * (n - len(refused)), summary
