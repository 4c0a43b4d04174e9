"""The radix prefix cache at engine level: greedy outputs are token-identical with the cache on
and off (shared few-shot prefixes, multi-turn chats, branching prefixes, pools small enough to
force evictions and retractions); ``cached_tokens`` is exact; namespaces never share."""

from __future__ import annotations

import pytest
import torch

from tests.engine.conftest import assert_input_logprobs, hf_logprobs

GREEDY = {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}
FEW_SHOT = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun. "
    "One day, she saw a big red ball in the park. She ran to get it and played with her friend. "
)
QUESTIONS = [
    "Then Tom said",
    "The dog barked and",
    "Lily was happy because",
    "After lunch, they went",
    "Mom called them and",
    "The bird sang a song about",
]


def generate_on_off(make_engine, prompts, params=GREEDY, **options):
    """Outputs with the radix cache (one engine, all calls) and without (a fresh engine)."""
    on = make_engine(**options)
    off = make_engine(disable_radix_cache=True, **options)
    return (
        on,
        [r["output_ids"] for r in on.generate(prompts, params)],
        [r["output_ids"] for r in off.generate(prompts, params)],
    )


def test_few_shot_prefix_is_shared_and_identical(make_engine):
    prompts = [FEW_SHOT + q for q in QUESTIONS]
    on, with_cache, without = generate_on_off(make_engine, prompts)
    assert with_cache == without
    # Repeat with a warm tree: every prompt now hits (at least) the few-shot prefix.
    again = on.generate(prompts, GREEDY)
    assert [r["output_ids"] for r in again] == without
    prefix_len = len(on.tokenizer.encode(FEW_SHOT)) - 1
    for r, p in zip(again, prompts):
        n = len(on.tokenizer.encode(p))
        assert r["meta_info"]["cached_tokens"] == n - 1
        assert r["meta_info"]["cached_tokens"] >= prefix_len
    stats = on.get_server_info()["prefix_cache"]
    assert stats["hit_tokens"] > 0 and stats["queried_tokens"] >= stats["hit_tokens"]


def test_in_batch_sharing_computes_the_prefix_once(make_engine):
    prompts = [FEW_SHOT * 2 + q for q in QUESTIONS]
    on, with_cache, without = generate_on_off(make_engine, prompts)
    assert with_cache == without
    stats = on.get_server_info()
    prompt_tokens = sum(len(on.tokenizer.encode(p)) for p in prompts)
    # Only the first request computes the shared prefix; the rest reuse it.
    shared = len(on.tokenizer.encode(FEW_SHOT * 2)) - 1
    assert stats["prefix_cache"]["hit_tokens"] >= (len(prompts) - 1) * (shared - 2)
    assert stats["prefill_computed_tokens"] < prompt_tokens - (len(prompts) - 2) * shared


def test_multi_turn_chat_reuses_turn_one(make_engine):
    on = make_engine()
    off = make_engine(disable_radix_cache=True)
    turn1 = [f"User: {q}\nAssistant:" for q in QUESTIONS[:4]]
    r1_on = on.generate(turn1, GREEDY)
    r1_off = off.generate(turn1, GREEDY)
    assert [r["output_ids"] for r in r1_on] == [r["output_ids"] for r in r1_off]
    turn2 = [p + r["text"] + "\nUser: And then?\nAssistant:" for p, r in zip(turn1, r1_on)]
    r2_on = on.generate(turn2, GREEDY)
    r2_off = off.generate(turn2, GREEDY)
    assert [r["output_ids"] for r in r2_on] == [r["output_ids"] for r in r2_off]
    for p, r in zip(turn1, r2_on):  # turn 2 starts with turn 1's prompt: at least that is cached
        assert r["meta_info"]["cached_tokens"] >= len(on.tokenizer.encode(p)) - 1


def test_branching_prefixes_match_transformers_free_reference(tiny_models, make_engine):
    g = torch.Generator().manual_seed(7)
    trunk = torch.randint(3, 512, (30,), generator=g).tolist()
    a = torch.randint(3, 512, (12,), generator=g).tolist()
    b = torch.randint(3, 512, (9,), generator=g).tolist()
    c = torch.randint(3, 512, (15,), generator=g).tolist()
    prompts = [trunk + a, trunk, trunk + a + b, trunk + c, trunk + a + b + c, trunk[:10], a]
    on = make_engine(tiny_models["llama"])
    off = make_engine(tiny_models["llama"], disable_radix_cache=True)
    params = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}
    ref = [r["output_ids"] for r in off.generate(input_ids=prompts, sampling_params=params)]
    for ids, expect in zip(prompts, ref):  # one by one, so each sees the earlier ones cached
        assert on.generate(input_ids=ids, sampling_params=params)["output_ids"] == expect
    assert [r["output_ids"] for r in on.generate(input_ids=prompts, sampling_params=params)] == ref


@pytest.mark.parametrize("policy", ["lpm", "dfs-weight", "fcfs"])
def test_small_pool_evicts_and_retracts_identically(policy, tiny_models, make_engine):
    g = torch.Generator().manual_seed(3)
    trunk = torch.randint(3, 512, (40,), generator=g).tolist()
    prompts = [trunk + torch.randint(3, 512, (n,), generator=g).tolist() for n in range(5, 53, 4)]
    prompts += [torch.randint(3, 512, (30,), generator=g).tolist() for _ in range(4)]
    params = {"temperature": 0, "max_new_tokens": 40, "ignore_eos": True}
    ref = make_engine(tiny_models["llama"], disable_radix_cache=True).generate(
        input_ids=prompts, sampling_params=params
    )
    engine = make_engine(tiny_models["llama"], max_total_tokens=260, schedule_policy=policy)
    for _ in range(2):  # the second round runs against a full tree: evictions
        out = engine.generate(input_ids=prompts, sampling_params=params)
        assert [r["output_ids"] for r in out] == [r["output_ids"] for r in ref]
    stats = engine.get_server_info()
    assert stats["num_retractions"] > 0, "the pool was meant to force retractions"
    assert stats["prefix_cache"]["evicted_tokens"] > 0, "the pool was meant to force evictions"
    assert stats["prefix_cache"]["hit_tokens"] > 0


def test_retracted_request_reuses_its_kv(tiny_models, make_engine):
    g = torch.Generator().manual_seed(11)
    prompts = [torch.randint(3, 512, (50,), generator=g).tolist() for _ in range(6)]
    params = {"temperature": 0, "max_new_tokens": 60, "ignore_eos": True}
    engine = make_engine(tiny_models["llama"], max_total_tokens=400)
    out = engine.generate(input_ids=prompts, sampling_params=params)
    stats = engine.get_server_info()
    assert stats["num_retractions"] > 0
    # No two prompts share a token prefix, so every hit is a retracted request's own KV.
    assert stats["prefix_cache"]["hit_tokens"] > 0
    assert any(r["meta_info"]["cached_tokens"] == 0 for r in out)


def test_cached_tokens_exact(tiny_models, make_engine):
    engine = make_engine(tiny_models["llama"])
    ids = list(range(10, 50))
    one = {"temperature": 0, "max_new_tokens": 1}
    assert engine.generate(input_ids=ids, sampling_params=one)["meta_info"]["cached_tokens"] == 0
    # The identical prompt reuses all but the last token (its logits must be recomputed).
    again = engine.generate(input_ids=ids, sampling_params=one)
    assert again["meta_info"]["cached_tokens"] == len(ids) - 1
    # With max_new_tokens=1 the tree holds exactly the prompt: an extension hits all of it.
    longer = engine.generate(input_ids=ids + [7, 8, 9], sampling_params=one)
    assert longer["meta_info"]["cached_tokens"] == len(ids)
    assert engine.flush_cache()
    assert engine.get_server_info()["prefix_cache"]["tree_tokens"] == 0
    fresh = engine.generate(input_ids=ids, sampling_params=one)
    assert fresh["meta_info"]["cached_tokens"] == 0


def test_logprob_start_len_limits_the_match(tiny_models, make_engine):
    engine = make_engine(tiny_models["llama"])
    ids = list(range(20, 60))
    one = {"temperature": 0, "max_new_tokens": 1}
    engine.generate(input_ids=ids, sampling_params=one)
    for start, cached in ((0, 0), (1, 0), (25, 24)):
        r = engine.generate(
            input_ids=ids, sampling_params=one, return_logprob=True, logprob_start_len=start
        )
        assert r["meta_info"]["cached_tokens"] == cached
        ref = hf_logprobs(tiny_models["llama"], ids)
        assert_input_logprobs(r["meta_info"]["input_token_logprobs"], ids, ref, start)


def test_cache_salt_and_extra_key_never_share(tiny_models, make_engine):
    engine = make_engine(tiny_models["llama"])
    ids = list(range(30, 70))
    one = {"temperature": 0, "max_new_tokens": 1}

    def cached(**kw):
        return engine.generate(input_ids=ids, sampling_params=one, **kw)["meta_info"][
            "cached_tokens"
        ]

    assert cached(cache_salt="tenant-a") == 0
    assert cached(cache_salt="tenant-b") == 0
    assert cached() == 0
    assert cached(cache_salt="tenant-a") == len(ids) - 1
    assert cached(extra_key="lora-1", cache_salt="tenant-a") == 0
    assert cached(extra_key="lora-1", cache_salt="tenant-a") == len(ids) - 1
    assert cached() == len(ids) - 1
    with pytest.raises(Exception, match="cache_salt"):
        engine.generate(input_ids=ids, sampling_params=one, cache_salt=5)


def _cold_request_overtakers(engine, steps: int) -> list[int] | None:
    """A cold request waits while a new cache-hot request arrives every step (one request runs
    at a time). Returns, for every hot request admitted before the cold one, how many passes
    the cold one had waited when that hot request arrived; None if the cold one never ran."""
    from radixlm.sampling_params import SamplingParams
    from radixlm.scheduler.io import AbortRequest, TokenizedRequest

    sched = engine.scheduler
    hot = list(range(100, 180))
    engine.generate(input_ids=hot, sampling_params={"max_new_tokens": 1})  # cache the hot prefix
    sp = SamplingParams.from_dict({"max_new_tokens": 2, "ignore_eos": True, "temperature": 0})
    sched.add_requests([TokenizedRequest("cold", list(range(300, 340)), sp)])
    cold = sched.reqs["cold"]
    arrived_at: dict[str, int] = {}
    overtakers: list[int] = []
    for i in range(steps):
        sched.add_requests([TokenizedRequest(f"hot{i}", hot + [3 + i], sp)])
        arrived_at[f"hot{i}"] = cold.waiting_passes
        before = {rid for rid, r in sched.reqs.items() if r.admitted_once}
        sched.step()
        if cold.admitted_once:
            break
        now = {rid for rid, r in sched.reqs.items() if r.admitted_once}
        overtakers += [arrived_at[rid] for rid in now - before]
    admitted = cold.admitted_once
    for rid in list(sched.reqs):
        sched.abort_request(AbortRequest(rid))
    while sched.has_work():
        sched.step()
    return overtakers if admitted else None


def test_aging_bound_prevents_starvation(tiny_models, make_engine):
    steps = 60
    starved = make_engine(
        tiny_models["llama"], max_running_requests=1, schedule_aging_tokens_per_pass=0
    )
    assert _cold_request_overtakers(starved, steps) is None  # the failure mode
    for policy in ("lpm", "dfs-weight"):
        engine = make_engine(
            tiny_models["llama"],
            max_running_requests=1,
            schedule_policy=policy,
            schedule_aging_tokens_per_pass=16,
        )
        overtakers = _cold_request_overtakers(engine, steps)
        assert overtakers is not None, policy
        # 80 matched tokens / 16 per pass: only requests arriving within 80 // 16 + 1 passes
        # of the cold one may overtake it.
        assert overtakers and max(overtakers) <= 80 // 16 + 1, (policy, overtakers)


def test_long_shared_document_is_prefilled_once_across_chunks(tiny_models, make_engine):
    g = torch.Generator().manual_seed(5)
    doc = torch.randint(3, 512, (300,), generator=g).tolist()
    prompts = [doc + torch.randint(3, 512, (10,), generator=g).tolist() for _ in range(4)]
    params = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
    ref = make_engine(tiny_models["llama"], disable_radix_cache=True).generate(
        input_ids=prompts, sampling_params=params
    )
    engine = make_engine(tiny_models["llama"], chunked_prefill_size=64)
    out = engine.generate(input_ids=prompts, sampling_params=params)
    assert [r["output_ids"] for r in out] == [r["output_ids"] for r in ref]
    # The document is computed once (by the first request, chunk by chunk); the others wait
    # for its last chunk and compute only their own suffix (+ the recomputed last token).
    computed = engine.get_server_info()["prefill_computed_tokens"]
    assert computed <= len(prompts[0]) + 3 * 11, computed
