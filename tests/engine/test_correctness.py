"""Outputs and logprobs equal transformers' (fp32), for every supported architecture."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import TINY_ARCHS
from tests.engine.conftest import assert_input_logprobs, hf_greedy, hf_logprobs

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")
GREEDY = {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_greedy_batch_matches_transformers(arch, tiny_models, random_prompts, make_engine):
    path = tiny_models[arch]
    expected = hf_greedy(path, random_prompts, 24)
    engine = make_engine(path)
    results = engine.generate(input_ids=random_prompts, sampling_params=GREEDY)
    assert [r["output_ids"] for r in results] == expected
    for r, ids in zip(results, random_prompts):
        assert r["meta_info"]["prompt_tokens"] == len(ids)
        assert r["meta_info"]["completion_tokens"] == 24
        assert r["meta_info"]["finish_reason"] == {"type": "length", "length": 24}


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_logprobs_match_transformers(arch, tiny_models, random_prompts, make_engine):
    path = tiny_models[arch]
    engine = make_engine(path)
    prompts = random_prompts[2:6]
    results = engine.generate(
        input_ids=prompts,
        sampling_params={"temperature": 0, "max_new_tokens": 8, "ignore_eos": True},
        return_logprob=True,
        logprob_start_len=0,
        top_logprobs_num=3,
    )
    for ids, r in zip(prompts, results):
        meta = r["meta_info"]
        full = ids + r["output_ids"]
        ref = hf_logprobs(path, full)  # ref[p] = distribution of token p + 1
        inputs = meta["input_token_logprobs"]
        assert len(inputs) == len(ids)
        assert inputs[0] == [None, ids[0], None]
        for t in range(1, len(ids)):
            lp, tid, _ = inputs[t]
            assert tid == ids[t]
            assert abs(lp - float(ref[t - 1, tid])) < 1e-4
        outputs = meta["output_token_logprobs"]
        assert [o[1] for o in outputs] == r["output_ids"]
        for k, (lp, tid, _) in enumerate(outputs):
            assert abs(lp - float(ref[len(ids) - 1 + k, tid])) < 1e-4
        # top-k: the greedy token is the top-1 entry at every output position
        for k, top in enumerate(meta["output_top_logprobs"]):
            assert len(top) == 3 and top[0][1] == r["output_ids"][k]
            ref_top = ref[len(ids) - 1 + k].topk(3)
            assert [t[1] for t in top] == ref_top.indices.tolist()
        assert meta["input_top_logprobs"][0] is None
        assert len(meta["input_top_logprobs"]) == len(ids)


def test_logprob_start_len_offsets(tiny_models, random_prompts, make_engine):
    path = tiny_models["llama"]
    engine = make_engine(path)
    ids = random_prompts[5]
    ref = hf_logprobs(path, ids)
    r = engine.generate(
        input_ids=ids,
        sampling_params={"max_new_tokens": 0},
        return_logprob=True,
        logprob_start_len=10,
    )
    assert_input_logprobs(r["meta_info"]["input_token_logprobs"], ids, ref, 10)
    assert r["output_ids"] == [] and r["meta_info"]["finish_reason"] == {
        "type": "length",
        "length": 0,
    }


def test_stories260k_golden_greedy(stories_model, make_engine):
    with open(os.path.join(FIXTURES, "stories260K_reference_greedy.json")) as f:
        ref = json.load(f)
    engine = make_engine()  # model_path=None → the bundled model
    cases = ref["cases"]
    results = engine.generate(
        [c["prompt"] for c in cases], {"temperature": 0, "max_new_tokens": ref["max_new_tokens"]}
    )
    for case, r in zip(cases, results):
        assert engine.tokenizer.encode(case["prompt"]) == case["prompt_ids"]
        assert r["output_ids"] == case["greedy_ids"]
        assert case["prompt"] + r["text"] == case["text"]
