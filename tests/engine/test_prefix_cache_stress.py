"""Randomised end-to-end stress of the radix cache: staggered arrivals sharing prefixes, a pool
small enough for evictions and retractions, tiny chunks, and aborts at random steps. Every
request must end exactly once; unaborted ones must match the roomy cache-off run token for
token; when idle, no KV slot or request row may leak (checked by the ``make_engine`` fixture)."""

from __future__ import annotations

import random

import pytest

from radixlm.sampling_params import SamplingParams
from radixlm.scheduler.io import AbortRequest, TokenizedRequest


def _workload(seed: int) -> list[tuple[str, list[int], int]]:
    rng = random.Random(seed)
    trunks = [[rng.randrange(3, 512) for _ in range(rng.randint(20, 60))] for _ in range(3)]
    reqs = []
    for i in range(30):
        trunk = rng.choice(trunks)[: rng.randint(10, 60)]
        suffix = [rng.randrange(3, 512) for _ in range(rng.randint(1, 30))]
        reqs.append((f"r{i}", trunk + suffix, rng.randint(1, 30)))
    return reqs


@pytest.mark.parametrize("seed,policy", [(0, "lpm"), (1, "dfs-weight"), (2, "fcfs")])
def test_random_traffic_with_aborts(seed, policy, tiny_models, make_engine):
    work = _workload(seed)
    ref_engine = make_engine(tiny_models["llama"], disable_radix_cache=True)
    reference = {
        rid: r["output_ids"]
        for (rid, _, _), r in zip(
            work,
            ref_engine.generate(
                input_ids=[ids for _, ids, _ in work],
                sampling_params=[
                    {"temperature": 0, "max_new_tokens": n, "ignore_eos": True} for _, _, n in work
                ],
            ),
        )
    }

    engine = make_engine(
        tiny_models["llama"], max_total_tokens=150, chunked_prefill_size=16, schedule_policy=policy
    )
    sched = engine.scheduler
    rng = random.Random(100 + seed)
    pending = list(work)
    outputs: dict[str, list[int]] = {rid: [] for rid, _, _ in work}
    finished: dict[str, dict] = {}
    aborted: set[str] = set()
    for _ in range(10_000):
        if pending:  # staggered arrivals: a few requests per step
            k = rng.randint(0, 3)
            wave, pending = pending[:k], pending[k:]
            sched.add_requests(
                [
                    TokenizedRequest(
                        rid,
                        ids,
                        SamplingParams.from_dict(
                            {"temperature": 0, "max_new_tokens": n, "ignore_eos": True}
                        ),
                    )
                    for rid, ids, n in wave
                ]
            )
        if sched.reqs and rng.random() < 0.05:  # abort a random live request
            rid = rng.choice(sorted(sched.reqs))
            sched.abort_request(AbortRequest(rid))
            aborted.add(rid)
        if not sched.has_work() and not pending:
            break
        for out in sched.step():
            assert out.rid not in finished, f"{out.rid} reported after it finished"
            outputs[out.rid] += out.new_token_ids
            if out.finished:
                finished[out.rid] = out.finished_reason
    else:
        pytest.fail("the scheduler did not drain")

    assert set(finished) == set(outputs), "every request must end exactly once"
    for rid, reason in finished.items():
        if reason["type"] == "abort":
            assert rid in aborted
            assert outputs[rid] == reference[rid][: len(outputs[rid])]
        else:
            assert outputs[rid] == reference[rid], rid
    stats = engine.get_server_info()
    assert any(r["type"] == "abort" for r in finished.values())
    assert stats["prefix_cache"]["hit_tokens"] > 0
    assert stats["prefix_cache"]["evicted_tokens"] > 0
    assert stats["num_retractions"] > 0
