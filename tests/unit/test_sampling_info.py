"""``SamplingBatchInfo`` and the sync-free sampler: a mixed batch against a per-row reference.

The batch covers every sampling group (greedy, plain, top-k, sort), penalties, min_new_tokens,
logit_bias and seeds. Each row's distribution must equal a naive float64 reference computed on
that row alone; seeded rows must draw the same ids in any batch; and ``sample`` must never read
a device value (on CPU: ``item`` / ``tolist`` / ``bool`` patched to raise; on CUDA:
``torch.cuda.set_sync_debug_mode("error")``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from radixlm.engine.sampler import Sampler, SamplingBatchInfo, SamplingRow
from radixlm.engine.sampling_info import GREEDY, PLAIN, SORT, TOP_K
from radixlm.sampling_params import SamplingParams

V = 64
CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# Cycled over the batch: every group, with and without penalties / seeds / bias.
MIXED: list[dict[str, Any]] = [
    {"temperature": 0.0},
    {"temperature": 0.8},
    {"temperature": 1.2, "min_p": 0.1},
    {"top_k": 5, "temperature": 0.7},
    {"top_k": 9, "top_p": 0.8, "min_p": 0.02},
    {"top_p": 0.85, "temperature": 1.1},
    {"top_p": 0.6, "repetition_penalty": 1.3, "sampling_seed": 11},
    {"temperature": 0.9, "frequency_penalty": 0.7, "presence_penalty": -0.4, "sampling_seed": 5},
    {"top_k": 1, "temperature": 1.0, "sampling_seed": 3},  # greedy despite the seed
    {"top_k": 7, "sampling_seed": 21, "logit_bias": {"4": 3.0, "9": -2.0}},
    {"temperature": 0.0, "repetition_penalty": 0.8, "min_new_tokens": 3},
    {"top_k": 200, "top_p": 0.9},  # top_k >= V: behaves as no top-k
]


def mixed_rows(n: int, seed: int = 0) -> list[SamplingRow]:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        params = SamplingParams.from_dict(MIXED[i % len(MIXED)])
        seen = torch.rand(V, generator=gen) < 0.4
        counts = torch.randint(0, 3, (V,), generator=gen, dtype=torch.int32) * seen
        rows.append(
            SamplingRow(
                params,
                num_output=i % 5,
                stop_ids=(1, 2),
                output_counts=counts.to(torch.int32),
                seen=seen,
                seed_offset=i % 2,
            )
        )
    return rows


def ref_row(logits: np.ndarray, r: SamplingRow) -> np.ndarray:
    """Naive float64 distribution of one row, in the order of sampler.py's docstring."""
    p, x = r.params, logits.astype(np.float64).copy()
    seen, counts = r.seen.numpy(), r.output_counts.numpy().astype(np.float64)
    if p.has_penalties:
        rep = p.repetition_penalty
        x = np.where(seen, np.where(x > 0, x / rep, x * rep), x)
        x = x - p.frequency_penalty * counts - p.presence_penalty * (counts > 0)
    if r.num_output < p.min_new_tokens:
        x[list(r.stop_ids)] = -np.inf
    for t, b in p.logit_bias.items():
        x[t] += b
    if p.is_greedy:
        out = np.zeros_like(x)
        out[int(np.argmax(x))] = 1.0
        return out
    q = np.exp(x / p.temperature - np.max(x / p.temperature))
    order = np.argsort(-q, kind="stable")
    k = len(q) if p.top_k == -1 else min(p.top_k, len(q))
    keep = np.zeros(len(q), dtype=bool)
    keep[order[:k]] = True
    mass = q[order[:k]] / q[order[:k]].sum()
    for rank, i in enumerate(order[:k]):
        if mass[:rank].sum() >= p.top_p:
            keep[i] = False
    keep &= q >= p.min_p * q.max()
    out = np.where(keep, q, 0.0)
    return out / out.sum()


def test_flags_and_groups_are_decided_on_the_host() -> None:
    rows = mixed_rows(len(MIXED))
    info = SamplingBatchInfo.build(rows, V, CPU)
    kinds = {g.kind: g.rows for g in info.groups}
    assert sorted(r for g in info.groups for r in g.rows) == list(range(len(rows)))
    assert sorted(kinds[GREEDY]) == [0, 8, 10]
    assert sorted(kinds[PLAIN]) == [1, 2, 7]
    assert sorted(kinds[TOP_K]) == [3, 4, 9]
    assert sorted(kinds[SORT]) == [5, 6, 11]
    for g in (g for g in info.groups if g.kind != GREEDY):  # drawn: unseeded rows first
        flags = [rows[i].params.sampling_seed is not None for i in g.rows]
        assert flags == sorted(flags)
    top_k = next(g for g in info.groups if g.kind == TOP_K)
    assert top_k.k == 9 and top_k.need_top_k and top_k.need_top_p and top_k.need_min_p
    assert top_k.seeded == [(2, 21 + 1, 4)]  # row 9: seed 21 + offset 1, 4 outputs so far
    assert not info.all_greedy and info.need_top_k and info.need_top_p and info.need_min_p
    assert info.has_penalties and info.has_min_tokens and info.has_logit_bias
    greedy = SamplingBatchInfo.build([SamplingRow(SamplingParams(temperature=0.0), 0, ())], V, CPU)
    assert greedy.all_greedy and not greedy.has_penalties and greedy.groups[0].index is None


@pytest.mark.parametrize("n", [len(MIXED), 37])
def test_batched_distribution_matches_per_row_reference(n: int) -> None:
    rows = mixed_rows(n, seed=n)
    logits = torch.randn(n, V, generator=torch.Generator().manual_seed(n)) * 2
    info = SamplingBatchInfo.build(rows, V, CPU)
    probs = Sampler.filtered_probs(Sampler.process_logits(logits, info), info).double()
    for i, r in enumerate(rows):
        ref = ref_row(logits[i].numpy(), r)
        got = (probs[i] / probs[i].sum()).numpy()
        assert np.array_equal(got > 0, ref > 0), (i, r.params)
        np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=str(r.params))


def test_greedy_rows_take_the_argmax_of_processed_logits() -> None:
    rows = mixed_rows(48)
    logits = torch.randn(48, V, generator=torch.Generator().manual_seed(4))
    info = SamplingBatchInfo.build(rows, V, CPU)
    out = Sampler(V, CPU).sample(logits, info).next_ids
    want = Sampler.process_logits(logits, info).argmax(dim=-1)
    greedy = [i for i, r in enumerate(rows) if r.params.is_greedy]
    assert out[greedy].tolist() == want[greedy].tolist()


def test_seeded_rows_draw_the_same_ids_alone_and_in_any_batch() -> None:
    rows = mixed_rows(36)
    logits = torch.randn(36, V, generator=torch.Generator().manual_seed(9)) * 0.5
    seeded = [i for i, r in enumerate(rows) if r.params.sampling_seed is not None]
    batched = Sampler(V, CPU, seed=1).sample(logits, rows).next_ids
    reordered = list(reversed(range(36)))
    other = Sampler(V, CPU, seed=2).sample(logits[reordered], [rows[i] for i in reordered])
    for i in seeded:
        alone = Sampler(V, CPU, seed=3).sample(logits[i : i + 1], [rows[i]]).next_ids
        assert batched[i] == alone[0] == other.next_ids[reordered.index(i)]


def test_process_logits_leaves_its_input_alone() -> None:
    rows = mixed_rows(24)
    logits = torch.randn(24, V, generator=torch.Generator().manual_seed(5))
    before = logits.clone()
    Sampler(V, CPU).sample(logits, rows, vocab_mask=all_allowed(24))
    assert torch.equal(logits, before)


def test_record_sampled_counts_the_new_token_in_place() -> None:
    rows = mixed_rows(6)
    counts = [r.output_counts.clone() for r in rows]
    next_ids = torch.tensor([3, 5, 3, 60, 0, 7])
    Sampler.record_sampled(SamplingBatchInfo.build(rows, V, CPU), next_ids)
    for r, c, t in zip(rows, counts, next_ids.tolist()):
        c[t] += 1
        assert torch.equal(r.output_counts, c) and bool(r.seen[t])


def all_allowed(n: int, device: torch.device = CPU) -> torch.Tensor:
    """A bitmask that allows every id (what unconstrained rows of a constrained batch get)."""
    return torch.full((n, (V + 31) // 32), -1, dtype=torch.int32, device=device)


def _raise(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the sampler read a device value (host sync)")


def test_sample_never_reads_a_tensor_value_on_the_host(monkeypatch) -> None:
    rows = mixed_rows(30)
    logits = torch.randn(30, V, generator=torch.Generator().manual_seed(6))
    mask = all_allowed(30)
    mask[3] = 0
    mask[3, 0] = 0b1010  # a constrained row: ids 1 and 3 only
    sampler = Sampler(V, CPU)
    with monkeypatch.context() as m:
        for name in ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"):
            m.setattr(torch.Tensor, name, _raise)
        info = SamplingBatchInfo.build(rows, V, CPU)
        out = sampler.sample(logits, info, want_logprobs=True, top_logprobs_num=3, vocab_mask=mask)
        sampler.record_sampled(info, out.next_ids)
        Sampler.filtered_probs(logits, info)
    assert out.next_ids[3].item() in (1, 3)


# ---- CUDA (skipped without it) ------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_gpu_sampling_has_no_host_sync() -> None:
    cuda = torch.device("cuda")
    rows = [_to(r, cuda) for r in mixed_rows(40)]
    logits = torch.randn(40, V, device=cuda)
    mask = all_allowed(40, cuda)
    sampler = Sampler(V, cuda)
    sampler.sample(logits, rows, True, 2, mask)  # warm-up: allocator, kernels, Triton compile
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        info = SamplingBatchInfo.build(rows, V, cuda)
        out = sampler.sample(logits, info, want_logprobs=True, top_logprobs_num=2, vocab_mask=mask)
        sampler.record_sampled(info, out.next_ids)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert out.next_ids.shape == (40,)


@pytest.mark.gpu
@needs_cuda
def test_gpu_distribution_matches_cpu() -> None:
    cuda = torch.device("cuda")
    rows = mixed_rows(36)
    logits = torch.randn(36, V, generator=torch.Generator().manual_seed(8)) * 2
    want = Sampler.filtered_probs(Sampler.process_logits(logits, rows), rows)
    rows_gpu = [_to(r, cuda) for r in rows]
    x = logits.to(cuda)
    got = Sampler.filtered_probs(Sampler.process_logits(x, rows_gpu), rows_gpu).cpu()
    torch.testing.assert_close(got / got.sum(1, keepdim=True), want / want.sum(1, keepdim=True))
    greedy = [i for i, r in enumerate(rows) if r.params.is_greedy]
    ids = Sampler(V, cuda).sample(x, rows_gpu).next_ids.cpu()
    assert ids[greedy].tolist() == Sampler(V, CPU).sample(logits, rows).next_ids[greedy].tolist()


def _to(r: SamplingRow, device: torch.device) -> SamplingRow:
    counts, seen = r.output_counts.to(device), r.seen.to(device)
    return SamplingRow(r.params, r.num_output, r.stop_ids, counts, seen, r.seed_offset)
