"""Batched sampling from fp32 logits, one row per request, with no host sync.

Processing order per row (same as SGLang/vLLM): repetition penalty (prompt + output tokens)
→ frequency/presence penalties (output tokens) → ``min_new_tokens`` masks the stop ids →
``logit_bias`` → grammar bitmask → greedy argmax, or temperature → top-k → top-p (on the
top-k renormalised distribution) → min-p (relative to the most likely token) → draw.

Draws use the exponential race ``argmax(p / E)``, ``E ~ Exp(1)`` i.i.d. per vocabulary id, which
samples exactly from ``p``. A request with ``sampling_seed`` draws its noise from a generator
seeded by ``(seed, output position)`` over the whole vocabulary (indexed by token id), so its
tokens do not depend on batch composition, retraction or step timing. Other rows share the
engine's generator.

The batch's parameters come as a :class:`SamplingBatchInfo` (built once per batch on the host;
see ``sampling_info.py``): every branch below is on its host-side flags, never on device values,
so on CUDA the whole call only queues kernels (no ``.item()``, ``.tolist()`` or ``bool(tensor)``).

NOTE: returned logprobs are the log-softmax of the *raw* model logits (before penalties,
temperature and truncation), as vLLM does by default; they compare directly with a reference
model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from radixlm.constrained.base import GrammarBackend
from radixlm.engine.sampling_info import (
    GREEDY,
    PLAIN,
    PenaltyInfo,
    SampleGroup,
    SamplingBatchInfo,
    SamplingRow,
    penalty_state,
)

__all__ = ["SampleOutput", "Sampler", "SamplingBatchInfo", "SamplingRow", "apply_vocab_mask"]

_SEED_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: decorrelates (seed, step) pairs
# Rank with a full sort rather than ``topk`` once k exceeds this fraction of the vocabulary.
_SORT_FRACTION = 8


@dataclass
class SampleOutput:
    next_ids: torch.Tensor  # [B] int64
    logprobs: torch.Tensor | None  # [B] fp32 raw logprob of each chosen id
    top_logprobs: torch.Tensor | None  # [B, k] fp32
    top_ids: torch.Tensor | None  # [B, k] int64


def seeded_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    mixed = (seed * _SEED_MIX + step * 0x632BE59BD9B4E019 + 1) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(mixed)


def apply_vocab_mask(logits: torch.Tensor, mask: torch.Tensor) -> None:
    """Set logits of disallowed ids to -inf in place (``mask``: ``[B, words]`` int32 bitmask).

    CUDA runs the Triton kernel (one pass, no unpacked mask); elsewhere, or without Triton, the
    torch reference :meth:`GrammarBackend.apply_mask`.
    """
    if logits.is_cuda:
        kernel = _triton_bitmask()
        if kernel is not None:
            kernel(logits, mask)
            return
    GrammarBackend.apply_mask(logits, mask)


@functools.cache
def _triton_bitmask():
    """The Triton kernel, or None without Triton (imported on first CUDA use)."""
    try:
        from radixlm.engine.triton_ops.bitmask import apply_token_bitmask_inplace
    except ImportError:
        return None
    return apply_token_bitmask_inplace


def as_batch_info(
    batch: SamplingBatchInfo | list[SamplingRow], logits: torch.Tensor
) -> SamplingBatchInfo:
    """The scheduler passes a prebuilt info; a list of rows (tests, tools) is built here."""
    if isinstance(batch, SamplingBatchInfo):
        return batch
    return SamplingBatchInfo.build(batch, logits.shape[1], logits.device)


class Sampler:
    def __init__(self, vocab_size: int, device: torch.device, seed: int = 0) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def sample(
        self,
        logits: torch.Tensor,  # [B, V] fp32
        batch: SamplingBatchInfo | list[SamplingRow],
        want_logprobs: bool = False,
        top_logprobs_num: int = 0,
        vocab_mask: torch.Tensor | None = None,  # [B, words] int32 bitmask (constrained rows)
    ) -> SampleOutput:
        """Draw one id per row. Only queues device work: never reads a device value."""
        info = as_batch_info(batch, logits)
        raw_logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None
        x = self.process_logits(logits, info)
        if vocab_mask is not None:
            if x is logits:
                x = x.clone()
            apply_vocab_mask(x, vocab_mask)
        next_ids = x.argmax(dim=-1) if info.all_greedy else self._draw(x, info)
        out = SampleOutput(next_ids, None, None, None)
        if raw_logprobs is not None:
            out.logprobs = raw_logprobs.gather(1, next_ids.unsqueeze(1)).squeeze(1)
            if top_logprobs_num > 0:
                k = min(top_logprobs_num, logits.shape[1])
                out.top_logprobs, out.top_ids = raw_logprobs.topk(k, dim=-1)
        return out

    @staticmethod
    def record_sampled(
        batch: SamplingBatchInfo | list[SamplingRow], next_ids: torch.Tensor
    ) -> None:
        """Count each row's sampled token in its penalty state (device ops, no host sync).

        Runs right after sampling, on the thread that samples, so the next batch's penalties
        see this token even when the scheduler has not processed the result yet (overlap).
        """
        state = (
            batch.penalty_state if isinstance(batch, SamplingBatchInfo) else penalty_state(batch)
        )
        if not state:
            return
        one = torch.ones(1, dtype=torch.int32, device=next_ids.device)
        for i, counts, seen in state:
            tok = next_ids[i : i + 1]
            counts.index_add_(0, tok, one)
            seen.index_fill_(0, tok, True)

    @staticmethod
    def process_logits(
        logits: torch.Tensor, batch: SamplingBatchInfo | list[SamplingRow]
    ) -> torch.Tensor:
        """Penalties, min_new_tokens and logit_bias; returns a new tensor only if something applies."""
        info = as_batch_info(batch, logits)
        x = logits
        if info.penalties is not None:
            x = _apply_penalties(x, info.penalties)
        if info.min_tokens is not None or info.logit_bias is not None:
            if x is logits:
                x = x.clone()
            if info.min_tokens is not None:
                x[info.min_tokens] = float("-inf")
            if info.logit_bias is not None:
                rows, ids, values = info.logit_bias
                x.index_put_((rows, ids), values, accumulate=True)
        return x

    @staticmethod
    def filtered_probs(
        x: torch.Tensor, batch: SamplingBatchInfo | list[SamplingRow]
    ) -> torch.Tensor:
        """Unnormalised sampling distribution after temperature, top-k, top-p and min-p (``[B, V]``;
        one-hot for greedy rows)."""
        info = as_batch_info(batch, x)
        out = torch.zeros_like(x)
        for g in info.groups:
            xg = x if g.index is None else x.index_select(0, g.index)
            if g.kind == GREEDY:
                dense = torch.zeros_like(xg).scatter_(1, xg.argmax(dim=-1, keepdim=True), 1.0)
            else:
                probs, ids = group_probs(xg, g)
                dense = probs if ids is None else torch.zeros_like(xg).scatter_(1, ids, probs)
            if g.index is None:
                return dense
            out.index_copy_(0, g.index, dense)
        return out

    def _draw(self, x: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
        """Next id of every row, each group drawn on its own rows."""
        if len(info.groups) == 1 and info.groups[0].index is None:
            return self._draw_group(x, info.groups[0])
        next_ids = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
        for g in info.groups:
            next_ids.index_copy_(0, g.index, self._draw_group(x.index_select(0, g.index), g))
        return next_ids

    def _draw_group(self, x: torch.Tensor, g: SampleGroup) -> torch.Tensor:
        if g.kind == GREEDY:
            return x.argmax(dim=-1)
        probs, ids = group_probs(x, g)  # [G, K]
        noise = torch.empty_like(probs)
        if g.num_unseeded:
            noise[: g.num_unseeded].exponential_(generator=self.generator)
        vocab = x.shape[1]
        for j, seed, step in g.seeded:
            gen = seeded_generator(seed, step, x.device)
            full = torch.empty(vocab, device=x.device).exponential_(generator=gen)  # [V] by id
            noise[j] = full if ids is None else full[ids[j]]
        choice = probs.div_(noise).argmax(dim=-1)  # [G]; probs is this call's own tensor
        return choice if ids is None else ids.gather(1, choice.unsqueeze(1)).squeeze(1)


def group_probs(x: torch.Tensor, g: SampleGroup) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Unnormalised filtered distribution of a non-greedy group's rows ``x [G, V]``.

    Returns ``(probs [G, K], ids)``: for PLAIN groups ``K = V`` and ``ids`` is None (columns are
    token ids); otherwise columns are ranks, most likely first, and ``ids [G, K]`` their token ids.
    Ranking the logits equals ranking the probabilities (temperature > 0 is monotone), and top-p
    / min-p are scale-free, so ranked groups never normalise over the whole vocabulary.
    """
    if g.kind == PLAIN:
        probs = torch.softmax(x / g.temperatures, dim=-1)
        if g.need_min_p:
            probs = probs.masked_fill(probs < g.min_ps * probs.amax(dim=-1, keepdim=True), 0.0)
        return probs, None
    vocab = x.shape[1]
    k = min(g.k, vocab)
    if k * _SORT_FRACTION < vocab:
        vals, ids = x.topk(k, dim=-1)  # sorted, descending
    else:
        vals, ids = x.sort(dim=-1, descending=True)
        vals, ids = vals[:, :k], ids[:, :k]
    # exp((v - v_max) / T), in place on the ranked values: [G, K], rank 0 has probability 1.
    probs = vals.sub_(vals[:, :1].clone()).div_(g.temperatures).exp_()
    if g.need_top_k:
        rank = torch.arange(k, device=x.device).unsqueeze(0)
        probs.masked_fill_(rank >= g.top_ks, 0.0)
    if g.need_top_p:
        # mass before each rank >= top_p (of the kept mass): dropped; rank 0 always stays.
        mass_before = probs.cumsum(dim=-1).sub_(probs)
        total = probs.sum(dim=-1, keepdim=True)
        probs.masked_fill_(mass_before >= g.top_ps * total, 0.0)
    if g.need_min_p:
        probs.masked_fill_(probs < g.min_ps, 0.0)  # relative to rank 0, whose probability is 1
    return probs, ids


def _apply_penalties(logits: torch.Tensor, pen: PenaltyInfo) -> torch.Tensor:
    """Repetition (on seen ids), then frequency and presence (on output counts); a new tensor."""
    sub = logits if pen.index is None else logits.index_select(0, pen.index)  # [P, V]
    if pen.repetition is not None:
        rep = pen.repetition
        seen = torch.stack(pen.seen)
        sub = torch.where(seen, torch.where(sub > 0, sub / rep, sub * rep), sub)
    if pen.frequency is not None:
        counts = torch.stack(pen.counts).to(sub.dtype)
        sub = sub - pen.frequency * counts - pen.presence * (counts > 0).to(sub.dtype)
    if pen.index is None:
        return sub if sub is not logits else logits.clone()
    out = logits.clone()
    out.index_copy_(0, pen.index, sub)
    return out
