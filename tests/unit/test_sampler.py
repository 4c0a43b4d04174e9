"""Sampler on hand-made logits, each behaviour checked against a naive numpy reference."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from radixlm.engine.sampler import Sampler, SamplingRow
from radixlm.sampling_params import SamplingParams

V = 12
# Distinct, well-separated logits: no ties, and no top-p boundary within float error (checked
# by test_reference_fixture_has_no_top_p_boundary_ties).
LOGITS = [2.1, -0.7, 0.9, 3.0, -2.2, 0.2, 1.6, -1.3, 0.5, 2.6, -0.1, 1.2]
N_DRAWS = 20_000

# Each filter alone and in combination.
CONFIGS: list[dict[str, Any]] = [
    {"temperature": 1.0},
    {"temperature": 0.5},
    {"temperature": 2.0},
    {"top_k": 4},
    {"top_k": 4, "temperature": 2.0},
    {"top_p": 0.7},
    {"top_p": 0.3, "temperature": 1.5},
    {"min_p": 0.2},
    {"min_p": 0.05, "temperature": 0.7},
    {"top_k": 6, "top_p": 0.8},
    {"top_k": 8, "top_p": 0.9, "min_p": 0.1, "temperature": 1.3},
    {"top_k": 100},
]


def row(num_output: int = 0, stop_ids: tuple[int, ...] = (), **params: Any) -> SamplingRow:
    """A SamplingRow with zero counts/seen (penalty tensors are always present)."""
    return SamplingRow(
        params=SamplingParams.from_dict(params),
        num_output=num_output,
        stop_ids=stop_ids,
        output_counts=torch.zeros(V, dtype=torch.int32),
        seen=torch.zeros(V, dtype=torch.bool),
    )


def batch(logits: list[float], n: int) -> torch.Tensor:
    return torch.tensor([logits] * n, dtype=torch.float32)


def ref_probs(
    logits: list[float],
    temperature: float = 1.0,
    top_k: int = -1,
    top_p: float = 1.0,
    min_p: float = 0.0,
) -> np.ndarray:
    """Naive float64 sampling distribution: temperature → top-k → top-p → min-p."""
    x = np.asarray(logits, dtype=np.float64)
    if temperature == 0 or top_k == 1:
        out = np.zeros_like(x)
        out[int(np.argmax(x))] = 1.0
        return out
    p = np.exp(x / temperature - np.max(x / temperature))
    p /= p.sum()
    order = sorted(range(len(p)), key=lambda i: -p[i])
    k = len(p) if top_k == -1 else min(top_k, len(p))
    keep = {i: rank < k for rank, i in enumerate(order)}
    topk_mass = sum(p[i] for i in order[:k])
    if top_p < 1.0:
        mass_before = 0.0
        for i in order[:k]:
            if mass_before >= top_p:
                keep[i] = False
            mass_before += p[i] / topk_mass
    p_max = p.max()
    out = np.array([p[i] if keep[i] and p[i] >= min_p * p_max else 0.0 for i in range(len(p))])
    return out / out.sum()


def ref_process(
    logits: list[float],
    rep: float,
    freq: float,
    pres: float,
    seen: list[bool],
    counts: list[int],
) -> list[float]:
    """Naive penalties: repetition on seen tokens, then frequency and presence on output counts."""
    out = []
    for x, s, c in zip(logits, seen, counts):
        if s:
            x = x / rep if x > 0 else x * rep
        x = x - freq * c - pres * (1.0 if c > 0 else 0.0)
        out.append(x)
    return out


def empirical(next_ids: torch.Tensor, vocab: int = V) -> np.ndarray:
    counts = np.bincount(next_ids.numpy(), minlength=vocab).astype(np.float64)
    return counts / counts.sum()


def test_reference_fixture_has_no_top_p_boundary_ties() -> None:
    for cfg in CONFIGS:
        if cfg.get("top_p", 1.0) >= 1.0:
            continue
        p = ref_probs(LOGITS, temperature=cfg.get("temperature", 1.0), top_k=cfg.get("top_k", -1))
        kept = np.sort(p[p > 0])[::-1]
        mass_before = np.cumsum(kept) - kept
        assert np.min(np.abs(mass_before - cfg["top_p"])) > 1e-3, cfg


# ---- greedy -------------------------------------------------------------------------------


def test_temperature_zero_is_argmax() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=gen) * 3
    rows = [row(temperature=0.0) for _ in range(64)]
    out = Sampler(50, torch.device("cpu")).sample(logits, rows)
    assert out.next_ids.tolist() == logits.argmax(dim=-1).tolist()


def test_top_k_one_equals_greedy_even_with_seed() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(32, 50, generator=gen)
    rows = [row(top_k=1, temperature=1.0, sampling_seed=i) for i in range(32)]
    assert all(r.params.is_greedy for r in rows)
    out = Sampler(50, torch.device("cpu")).sample(logits, rows)
    assert out.next_ids.tolist() == logits.argmax(dim=-1).tolist()


def test_greedy_rows_stay_argmax_in_a_mixed_batch() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(40, 50, generator=gen)
    rows = [row(temperature=0.0) if i % 2 else row(temperature=1.5) for i in range(40)]
    out = Sampler(50, torch.device("cpu")).sample(logits, rows)
    argmax = logits.argmax(dim=-1)
    assert out.next_ids[1::2].tolist() == argmax[1::2].tolist()
    # The sampled rows are not all argmax (flat logits at temperature 1.5).
    assert out.next_ids[0::2].tolist() != argmax[0::2].tolist()


# ---- seeded sampling ----------------------------------------------------------------------


def test_seeded_draw_independent_of_sampler_and_batch() -> None:
    flat = [0.0] * V
    seeded = row(num_output=3, sampling_seed=42)
    alone = Sampler(V, torch.device("cpu"), seed=0).sample(batch(flat, 1), [seeded])
    other = Sampler(V, torch.device("cpu"), seed=999)
    other.sample(batch(flat, 5), [row() for _ in range(5)])  # advance the shared generator
    mates = [row(), row(temperature=0.0), seeded, row(sampling_seed=7), row(top_k=3)]
    mixed = other.sample(batch(flat, len(mates)), mates)
    assert mixed.next_ids[2].item() == alone.next_ids[0].item()


@pytest.mark.parametrize("seed", [0, 1, 123456789, -5])
def test_seeded_draw_is_repeatable(seed: int) -> None:
    logits = batch(LOGITS, 1)
    draws = {
        Sampler(V, torch.device("cpu"), seed=s)
        .sample(logits, [row(num_output=9, sampling_seed=seed, temperature=3.0)])
        .next_ids.item()
        for s in range(5)
    }
    assert len(draws) == 1


def test_different_seeds_and_positions_give_different_draws() -> None:
    vocab = 50
    flat = torch.zeros(200, vocab)
    sampler = Sampler(vocab, torch.device("cpu"))

    def seeded(seed_pos: list[tuple[int, int]]) -> list[SamplingRow]:
        return [SamplingRow(SamplingParams(sampling_seed=s), n, ()) for s, n in seed_pos]

    by_seed = sampler.sample(flat, seeded([(s, 0) for s in range(200)])).next_ids
    by_pos = sampler.sample(flat, seeded([(7, n) for n in range(200)])).next_ids
    # 200 uniform draws over 50 ids hit ~49 distinct ids; a broken seed mix hits very few.
    assert len(set(by_seed.tolist())) > 35
    assert len(set(by_pos.tolist())) > 35
    offsets = [
        SamplingRow(SamplingParams(sampling_seed=7), 0, (), seed_offset=o) for o in range(200)
    ]
    assert len(set(sampler.sample(flat, offsets).next_ids.tolist())) > 35


def test_seeded_draws_follow_the_distribution() -> None:
    n = 5000
    rows = [row(num_output=i % 7, sampling_seed=i, top_k=6) for i in range(n)]
    out = Sampler(V, torch.device("cpu")).sample(batch(LOGITS, n), rows)
    ref = ref_probs(LOGITS, top_k=6)
    emp = empirical(out.next_ids)
    assert np.all(emp[ref == 0] == 0)
    assert 0.5 * np.abs(emp - ref).sum() < 0.04


# ---- filtered distribution: exact and empirical -------------------------------------------


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_filtered_probs_match_reference(cfg: dict[str, Any]) -> None:
    probs = Sampler.filtered_probs(batch(LOGITS, 1), [row(**cfg)])[0].double().numpy()
    probs /= probs.sum()
    ref = ref_probs(LOGITS, **cfg)
    assert np.array_equal(probs > 0, ref > 0)
    np.testing.assert_allclose(probs, ref, atol=1e-6)


def test_filtered_probs_rows_are_independent() -> None:
    rows = [row(**cfg) for cfg in CONFIGS]
    probs = Sampler.filtered_probs(batch(LOGITS, len(rows)), rows).double()
    for cfg, p in zip(CONFIGS, probs):
        np.testing.assert_allclose((p / p.sum()).numpy(), ref_probs(LOGITS, **cfg), atol=1e-6)


def chi_square(emp: np.ndarray, ref: np.ndarray, n: int) -> tuple[float, int]:
    """Pearson statistic over the support of ``ref`` and its degrees of freedom."""
    support = ref > 0
    observed, expected = emp[support] * n, ref[support] * n
    return float(((observed - expected) ** 2 / expected).sum()), int(support.sum()) - 1


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_sample_distribution_matches_reference(cfg: dict[str, Any]) -> None:
    rows = [row(**cfg)] * N_DRAWS
    out = Sampler(V, torch.device("cpu"), seed=1234).sample(batch(LOGITS, N_DRAWS), rows)
    ref = ref_probs(LOGITS, **cfg)
    emp = empirical(out.next_ids)
    assert np.all(emp[ref == 0] == 0), "drew a filtered-out token"
    assert 0.5 * np.abs(emp - ref).sum() < 0.03
    stat, df = chi_square(emp, ref, N_DRAWS)
    # Loose bound (mean df, sd sqrt(2 df)): catches a wrong distribution, never a fair seed.
    assert stat < df + 8 * np.sqrt(2 * max(df, 1)) + 10


# ---- logit processing ---------------------------------------------------------------------


PENALTIES = [
    (1.0, 0.0, 0.0),
    (1.3, 0.0, 0.0),
    (0.7, 0.0, 0.0),
    (1.0, 0.5, 0.0),
    (1.0, 0.0, -0.8),
    (1.8, 1.5, 0.6),
    (0.5, -1.0, 2.0),
]


def test_penalties_match_reference() -> None:
    gen = np.random.default_rng(0)
    logits = gen.normal(size=(len(PENALTIES), V)).round(3) * 2
    rows, refs = [], []
    for (rep, freq, pres), lg in zip(PENALTIES, logits):
        seen = gen.random(V) < 0.5
        counts = gen.integers(0, 4, size=V) * seen  # output tokens are a subset of seen
        rows.append(
            SamplingRow(
                SamplingParams.from_dict(
                    {"repetition_penalty": rep, "frequency_penalty": freq, "presence_penalty": pres}
                ),
                num_output=int(counts.sum()),
                stop_ids=(),
                output_counts=torch.tensor(counts, dtype=torch.int32),
                seen=torch.tensor(seen),
            )
        )
        refs.append(ref_process(lg.tolist(), rep, freq, pres, seen.tolist(), counts.tolist()))
    x = torch.tensor(logits, dtype=torch.float32)
    before = x.clone()
    out = Sampler.process_logits(x, rows)
    np.testing.assert_allclose(out.numpy(), np.array(refs), rtol=1e-5, atol=1e-5)
    assert torch.equal(x, before), "process_logits mutated its input"


def test_process_logits_is_identity_without_options() -> None:
    x = batch(LOGITS, 3)
    assert Sampler.process_logits(x, [row(), row(temperature=0.3), row(top_k=2)]) is x


@pytest.mark.parametrize("num_output", [0, 1, 2])
def test_min_new_tokens_masks_stop_ids_until_reached(num_output: int) -> None:
    stop = (3, 9)  # the two largest logits
    r = row(num_output=num_output, stop_ids=stop, min_new_tokens=3)
    out = Sampler.process_logits(batch(LOGITS, 1), [r])[0]
    assert out[list(stop)].tolist() == [float("-inf")] * 2
    others = [i for i in range(V) if i not in stop]
    assert out[others].tolist() == pytest.approx([LOGITS[i] for i in others])
    greedy = row(num_output=num_output, stop_ids=stop, min_new_tokens=3, temperature=0.0)
    assert Sampler(V, torch.device("cpu")).sample(batch(LOGITS, 1), [greedy]).next_ids.item() == 0


@pytest.mark.parametrize("num_output", [3, 10])
def test_min_new_tokens_no_mask_once_reached(num_output: int) -> None:
    r = row(num_output=num_output, stop_ids=(3, 9), min_new_tokens=3, temperature=0.0)
    x = batch(LOGITS, 1)
    assert torch.equal(Sampler.process_logits(x, [r]), x)
    assert Sampler(V, torch.device("cpu")).sample(x, [r]).next_ids.item() == 3


def test_logit_bias_adds_to_given_ids() -> None:
    bias = {"1": 5.0, 4: -3.5, 11: 0.25}
    out = Sampler.process_logits(batch(LOGITS, 2), [row(logit_bias=bias), row()])
    expected = list(LOGITS)
    for k, b in bias.items():
        expected[int(k)] += b
    assert out[0].tolist() == pytest.approx(expected)
    assert out[1].tolist() == pytest.approx(LOGITS)
    greedy = row(logit_bias={1: 10.0}, temperature=0.0)
    assert Sampler(V, torch.device("cpu")).sample(batch(LOGITS, 1), [greedy]).next_ids.item() == 1


# ---- logprobs -----------------------------------------------------------------------------


def test_logprobs_are_of_raw_logits() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, V, generator=gen) * 2
    seen = torch.ones(V, dtype=torch.bool)
    rows = [
        SamplingRow(
            SamplingParams.from_dict(
                {
                    "temperature": 0.6,
                    "top_k": 5,
                    "repetition_penalty": 1.5,
                    "logit_bias": {0: 4.0},
                    "min_new_tokens": 1,
                }
            ),
            num_output=0,
            stop_ids=(int(logits[i].argmax()),),
            output_counts=torch.zeros(V, dtype=torch.int32),
            seen=seen,
        )
        for i in range(4)
    ]
    rows[0] = row(temperature=0.0)
    out = Sampler(V, torch.device("cpu")).sample(
        logits, rows, want_logprobs=True, top_logprobs_num=3
    )
    raw = torch.log_softmax(logits, dim=-1)
    expected = raw.gather(1, out.next_ids[:, None]).squeeze(1)
    torch.testing.assert_close(out.logprobs, expected)
    top_vals, top_ids = torch.topk(raw, 3, dim=-1)
    torch.testing.assert_close(out.top_logprobs, top_vals)
    assert torch.equal(out.top_ids, top_ids)


def test_logprobs_off_by_default_and_top_k_clipped_to_vocab() -> None:
    sampler = Sampler(V, torch.device("cpu"))
    plain = sampler.sample(batch(LOGITS, 1), [row(temperature=0.0)])
    assert plain.logprobs is None and plain.top_logprobs is None and plain.top_ids is None
    out = sampler.sample(
        batch(LOGITS, 1), [row(temperature=0.0)], want_logprobs=True, top_logprobs_num=100
    )
    assert out.top_ids.shape == (1, V)
    assert out.logprobs.item() == pytest.approx(out.top_logprobs[0, 0].item())
