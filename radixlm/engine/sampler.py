"""Batched sampling from fp32 logits, one row per request.

Processing order per row (same as SGLang/vLLM): repetition penalty (prompt + output tokens)
→ frequency/presence penalties (output tokens) → ``min_new_tokens`` masks the stop ids →
``logit_bias`` → greedy argmax, or temperature → top-k → top-p (on the top-k renormalised
distribution) → min-p (relative to the most likely token) → draw.

Draws use the exponential race ``argmax(p / E)``, ``E ~ Exp(1)`` i.i.d. per vocabulary id, which
samples exactly from ``p``. A request with ``sampling_seed`` draws its noise from a generator
seeded by ``(seed, output position)``, so its tokens do not depend on batch composition,
retraction or step timing. Other rows share the engine's generator.

NOTE: returned logprobs are the log-softmax of the *raw* model logits (before penalties,
temperature and truncation), as vLLM does by default; they compare directly with a reference
model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radixlm.constrained.base import GrammarBackend
from radixlm.sampling_params import SamplingParams

apply_vocab_mask = GrammarBackend.apply_mask

_SEED_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: decorrelates (seed, step) pairs


@dataclass
class SamplingRow:
    params: SamplingParams
    num_output: int  # tokens generated so far by this request
    stop_ids: tuple[int, ...]  # ids masked while num_output < min_new_tokens
    output_counts: torch.Tensor | None = None  # [V] int32, occurrences among output tokens
    seen: torch.Tensor | None = None  # [V] bool, token occurs in prompt or output
    seed_offset: int = 0  # added to sampling_seed (n>1 copies of one request differ)


@dataclass
class SampleOutput:
    next_ids: torch.Tensor  # [B] int64
    logprobs: torch.Tensor | None  # [B] fp32 raw logprob of each chosen id
    top_logprobs: torch.Tensor | None  # [B, k] fp32
    top_ids: torch.Tensor | None  # [B, k] int64


def seeded_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    mixed = (seed * _SEED_MIX + step * 0x632BE59BD9B4E019 + 1) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(mixed)


class Sampler:
    def __init__(self, vocab_size: int, device: torch.device, seed: int = 0) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def sample(
        self,
        logits: torch.Tensor,  # [B, V] fp32
        rows: list[SamplingRow],
        want_logprobs: bool = False,
        top_logprobs_num: int = 0,
        vocab_mask: torch.Tensor | None = None,  # [B, words] int32 bitmask (constrained rows)
    ) -> SampleOutput:
        raw_logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None
        x = self.process_logits(logits, rows)
        if vocab_mask is not None:
            if x is logits:
                x = x.clone()
            apply_vocab_mask(x, vocab_mask)
        greedy = [r.params.is_greedy for r in rows]
        if all(greedy):
            next_ids = x.argmax(dim=-1)
        else:
            next_ids = self._draw(x, rows, greedy)
        out = SampleOutput(next_ids, None, None, None)
        if raw_logprobs is not None:
            out.logprobs = raw_logprobs.gather(1, next_ids.unsqueeze(1)).squeeze(1)
            if top_logprobs_num > 0:
                k = min(top_logprobs_num, logits.shape[1])
                out.top_logprobs, out.top_ids = raw_logprobs.topk(k, dim=-1)
        return out

    @staticmethod
    def record_sampled(rows: list[SamplingRow], next_ids: torch.Tensor) -> None:
        """Count each row's sampled token in its penalty state (device ops, no host sync).

        Runs right after sampling, on the thread that samples, so the next batch's penalties
        see this token even when the scheduler has not processed the result yet (overlap).
        """
        for i, r in enumerate(rows):
            if r.output_counts is not None:
                tok = next_ids[i : i + 1]
                r.output_counts.index_add_(0, tok, torch.ones_like(tok, dtype=torch.int32))
                r.seen[tok] = True

    @staticmethod
    def process_logits(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """Penalties, min_new_tokens and logit_bias; returns a new tensor only if something applies."""
        x = logits
        copied = False

        def writable() -> torch.Tensor:
            nonlocal x, copied
            if not copied:
                x, copied = x.clone(), True
            return x

        pen = [i for i, r in enumerate(rows) if r.params.has_penalties]
        if pen:
            x = writable()
            idx = torch.tensor(pen, device=x.device)
            sub = x[idx]
            rep = torch.tensor([rows[i].params.repetition_penalty for i in pen], device=x.device)
            if bool((rep != 1.0).any()):
                seen = torch.stack([rows[i].seen for i in pen])
                scaled = torch.where(sub > 0, sub / rep[:, None], sub * rep[:, None])
                sub = torch.where(seen, scaled, sub)
            freq = torch.tensor([rows[i].params.frequency_penalty for i in pen], device=x.device)
            pres = torch.tensor([rows[i].params.presence_penalty for i in pen], device=x.device)
            if bool((freq != 0).any() | (pres != 0).any()):
                counts = torch.stack([rows[i].output_counts for i in pen]).to(sub.dtype)
                sub = sub - freq[:, None] * counts - pres[:, None] * (counts > 0).to(sub.dtype)
            x[idx] = sub
        for i, r in enumerate(rows):
            if r.num_output < r.params.min_new_tokens and r.stop_ids:
                writable()[i, list(r.stop_ids)] = float("-inf")
            if r.params.logit_bias:
                ids = torch.tensor(list(r.params.logit_bias), device=x.device)
                bias = torch.tensor(list(r.params.logit_bias.values()), device=x.device)
                writable()[i, ids] += bias
        return x

    def _draw(self, x: torch.Tensor, rows: list[SamplingRow], greedy: list[bool]) -> torch.Tensor:
        probs = self.filtered_probs(x, rows)
        noise = torch.empty_like(probs).exponential_(generator=self.generator)
        for i, r in enumerate(rows):
            if r.params.sampling_seed is not None and not greedy[i]:
                g = seeded_generator(r.params.sampling_seed + r.seed_offset, r.num_output, x.device)
                noise[i] = torch.empty(x.shape[1], device=x.device).exponential_(generator=g)
        sampled = (probs / noise).argmax(dim=-1)
        greedy_t = torch.tensor(greedy, device=x.device)
        return torch.where(greedy_t, x.argmax(dim=-1), sampled)

    @staticmethod
    def filtered_probs(x: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """Unnormalised sampling distribution after temperature, top-k, top-p and min-p."""
        temps = torch.tensor(
            [max(r.params.temperature, 1e-6) for r in rows], device=x.device
        ).unsqueeze(1)
        probs = torch.softmax(x / temps, dim=-1)
        top_ks = [r.params.top_k for r in rows]
        top_ps = [r.params.top_p for r in rows]
        min_ps = [r.params.min_p for r in rows]
        if all(k == -1 for k in top_ks) and all(p >= 1.0 for p in top_ps) and not any(min_ps):
            return probs
        vocab = x.shape[1]
        sorted_p, order = probs.sort(dim=-1, descending=True)  # [B, V]
        rank = torch.arange(vocab, device=x.device).unsqueeze(0)
        k = torch.tensor([vocab if k == -1 else min(k, vocab) for k in top_ks], device=x.device)
        sorted_p = sorted_p.masked_fill(rank >= k[:, None], 0.0)
        renorm = sorted_p / sorted_p.sum(dim=-1, keepdim=True)
        mass_before = renorm.cumsum(dim=-1) - renorm
        top_p = torch.tensor([p if p < 1.0 else float("inf") for p in top_ps], device=x.device)[
            :, None
        ]
        sorted_p = sorted_p.masked_fill(mass_before >= top_p, 0.0)
        min_p = torch.tensor(min_ps, device=x.device).unsqueeze(1)
        sorted_p = sorted_p.masked_fill(sorted_p < min_p * sorted_p[:, :1], 0.0)
        return torch.zeros_like(probs).scatter_(1, order, sorted_p)
