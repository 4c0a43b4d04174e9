"""``SamplingBatchInfo``: one batch's sampling parameters as device tensors, built once on the host.

Built from the rows' ``SamplingParams`` when a batch is launched (on the scheduler thread, so
under overlap scheduling this host work hides behind the previous batch's forward). Every
decision that selects code — all greedy, which filters run, penalties, ``min_new_tokens``,
``logit_bias``, seeds — is made here from Python values, never from device tensors, so the
sampler runs a fixed sequence of device ops without a host sync.

Rows are partitioned into groups by what their draw needs (each group is drawn on its own
rows only, so a few greedy or top-p rows do not make the whole batch pay for a sort):

- ``greedy``: argmax (temperature 0, or top_k == 1);
- ``plain``: temperature (and min-p) over the whole vocabulary, nothing ranked;
- ``top_k``: every row keeps at most ``k`` ids (``k`` = the group's largest top_k < V): only
  the ``k`` most likely ids are ranked (``topk``), top-p and min-p apply among them;
- ``sort``: top-p without top-k: the whole vocabulary is ranked.

All float parameters of the batch travel in one float32 tensor and all integers (group row
indices, top-k, penalty rows, masked and biased ids) in one int64 tensor: two copies from
pinned memory with ``non_blocking=True`` on CUDA. Group parameters are slices of them.

Invariants: the groups partition ``range(batch_size)``; inside a group unseeded rows come
first (the shared generator fills their noise as one slice). Penalty state (``seen`` /
``output_counts``, per-request device tensors) is held by reference and stacked only when the
sampler runs — on the forward thread, after the previous batch's ``record_sampled`` — so a
penalty never misses a token that was still being sampled when this batch was launched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from radixlm.engine.transfer import to_device
from radixlm.sampling_params import SamplingParams

GREEDY, PLAIN, TOP_K, SORT = "greedy", "plain", "top_k", "sort"


@dataclass
class SamplingRow:
    params: SamplingParams
    num_output: int  # tokens generated so far by this request
    stop_ids: tuple[int, ...]  # ids masked while num_output < min_new_tokens
    output_counts: torch.Tensor | None = None  # [V] int32, occurrences among output tokens
    seen: torch.Tensor | None = None  # [V] bool, token occurs in prompt or output
    seed_offset: int = 0  # added to sampling_seed (n>1 copies of one request differ)


@dataclass
class SampleGroup:
    """Rows of a batch drawn the same way; tensors are ``[G, 1]`` columns on the device."""

    kind: str  # GREEDY | PLAIN | TOP_K | SORT
    rows: list[int]  # batch rows; unseeded rows first
    index: torch.Tensor | None  # [G] int64 = rows; None when rows == range(batch_size)
    k: int = 0  # ranked columns (TOP_K: largest top_k; SORT: vocabulary size)
    need_top_k: bool = False  # some row keeps fewer than k ids
    need_top_p: bool = False
    need_min_p: bool = False
    temperatures: torch.Tensor | None = None  # [G, 1] fp32
    top_ks: torch.Tensor | None = None  # [G, 1] int64 (TOP_K groups with need_top_k)
    top_ps: torch.Tensor | None = None  # [G, 1] fp32, inf where top_p == 1 (need_top_p)
    min_ps: torch.Tensor | None = None  # [G, 1] fp32 (need_min_p)
    seeded: list[tuple[int, int, int]] = field(default_factory=list)  # (row in group, seed, step)

    @property
    def num_unseeded(self) -> int:
        return len(self.rows) - len(self.seeded)


@dataclass
class PenaltyInfo:
    """Rows with repetition / frequency / presence penalties (``[P, 1]`` coefficients)."""

    index: torch.Tensor | None  # [P] int64 batch rows; None when every row is penalised
    seen: list[torch.Tensor]  # per row [V] bool, stacked by the sampler
    counts: list[torch.Tensor]  # per row [V] int32, stacked by the sampler
    repetition: torch.Tensor | None  # None when every repetition_penalty is 1
    frequency: torch.Tensor | None  # None (with presence) when both are 0 for every row
    presence: torch.Tensor | None


@dataclass
class SamplingBatchInfo:
    """Everything the sampler needs for one batch: host flags that choose the ops, and the
    per-row parameters (temperature, top-k/p, min-p, penalties, masks, bias) on the device.
    Immutable once built, except that ``penalty_state`` tensors are updated in place by
    ``Sampler.record_sampled``."""

    batch_size: int
    vocab_size: int
    groups: list[SampleGroup]
    penalties: PenaltyInfo | None = None
    # (rows [S], ids [S]): logits set to -inf (stop ids while num_output < min_new_tokens).
    min_tokens: tuple[torch.Tensor, torch.Tensor] | None = None
    # (rows [N], ids [N], values [N] fp32): added to the logits.
    logit_bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    # (batch row, output_counts, seen) of every row with penalty state: record_sampled's work.
    penalty_state: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    # ---- flags (host values) -------------------------------------------------------------
    @property
    def all_greedy(self) -> bool:
        return all(g.kind == GREEDY for g in self.groups)

    @property
    def has_penalties(self) -> bool:
        return self.penalties is not None

    @property
    def has_min_tokens(self) -> bool:
        return self.min_tokens is not None

    @property
    def has_logit_bias(self) -> bool:
        return self.logit_bias is not None

    @property
    def need_top_k(self) -> bool:
        return any(g.kind == TOP_K for g in self.groups)

    @property
    def need_top_p(self) -> bool:
        return any(g.need_top_p for g in self.groups)

    @property
    def need_min_p(self) -> bool:
        return any(g.need_min_p for g in self.groups)

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def build(
        cls, rows: list[SamplingRow], vocab_size: int, device: torch.device
    ) -> SamplingBatchInfo:
        """Decide everything on the host and start the (non-blocking) copies to ``device``.

        NOTE: the copies are queued on the calling thread's current stream; the sampler must
        run on that stream (today: the default stream on both threads) or wait on it.
        """
        pack = _Pack()
        batch = len(rows)
        groups = [
            _group(kind, members, rows, vocab_size, pack)
            for kind, members in _partition(rows, vocab_size).items()
            if members
        ]
        pen_rows = [i for i, r in enumerate(rows) if r.params.has_penalties]
        pen_spans = _penalty_spans(pen_rows, rows, pack) if pen_rows else None
        masked = [
            (i, t)
            for i, r in enumerate(rows)
            if r.num_output < r.params.min_new_tokens
            for t in r.stop_ids
        ]
        mask_spans = (pack.ints([i for i, _ in masked]), pack.ints([t for _, t in masked]))
        biased = [(i, t, b) for i, r in enumerate(rows) for t, b in r.params.logit_bias.items()]
        bias_spans = (
            pack.ints([i for i, _, _ in biased]),
            pack.ints([t for _, t, _ in biased]),
            pack.floats([b for _, _, b in biased]),
        )

        pack.upload(device)
        info = cls(batch, vocab_size, [])
        for g, spans in groups:
            g.index = pack.view(spans["index"])
            g.temperatures = pack.view(spans.get("temperatures"), column=True)
            g.top_ks = pack.view(spans.get("top_ks"), column=True)
            g.top_ps = pack.view(spans.get("top_ps"), column=True)
            g.min_ps = pack.view(spans.get("min_ps"), column=True)
            info.groups.append(g)
        if pen_spans is not None:
            info.penalties = PenaltyInfo(
                index=pack.view(pen_spans[0]),
                seen=[rows[i].seen for i in pen_rows],
                counts=[rows[i].output_counts for i in pen_rows],
                repetition=pack.view(pen_spans[1], column=True),
                frequency=pack.view(pen_spans[2], column=True),
                presence=pack.view(pen_spans[3], column=True),
            )
        if masked:
            info.min_tokens = (pack.view(mask_spans[0]), pack.view(mask_spans[1]))
        if biased:
            info.logit_bias = tuple(pack.view(s) for s in bias_spans)
        info.penalty_state = penalty_state(rows)
        return info


def penalty_state(rows: list[SamplingRow]) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """(batch row, output_counts, seen) of every row that keeps penalty state."""
    return [(i, r.output_counts, r.seen) for i, r in enumerate(rows) if r.output_counts is not None]


def _partition(rows: list[SamplingRow], vocab_size: int) -> dict[str, list[int]]:
    """Batch rows by group kind; inside each kind, unseeded rows first."""
    out: dict[str, list[int]] = {GREEDY: [], PLAIN: [], TOP_K: [], SORT: []}
    for i, r in enumerate(rows):
        p = r.params
        if p.is_greedy:
            out[GREEDY].append(i)
        elif p.top_k != -1 and p.top_k < vocab_size:
            out[TOP_K].append(i)
        elif p.top_p < 1.0:
            out[SORT].append(i)
        else:
            out[PLAIN].append(i)
    for kind in (PLAIN, TOP_K, SORT):
        out[kind].sort(key=lambda i: rows[i].params.sampling_seed is not None)  # stable
    return out


def _penalty_spans(pen_rows: list[int], rows: list[SamplingRow], pack: _Pack) -> tuple:
    """Pack spans of (row index, repetition, frequency, presence); None for what is unused."""
    ps = [rows[i].params for i in pen_rows]
    for i in pen_rows:
        assert rows[i].seen is not None, "a penalised row needs its penalty state"
    rep = any(p.repetition_penalty != 1.0 for p in ps)
    freq = any(p.frequency_penalty != 0.0 or p.presence_penalty != 0.0 for p in ps)
    return (
        None if pen_rows == list(range(len(rows))) else pack.ints(pen_rows),
        pack.floats([p.repetition_penalty for p in ps]) if rep else None,
        pack.floats([p.frequency_penalty for p in ps]) if freq else None,
        pack.floats([p.presence_penalty for p in ps]) if freq else None,
    )


def _group(
    kind: str, members: list[int], rows: list[SamplingRow], vocab_size: int, pack: _Pack
) -> tuple[SampleGroup, dict]:
    """A group and the pack spans of its tensors (views are taken after the upload)."""
    whole = members == list(range(len(rows)))
    spans: dict = {"index": None if whole else pack.ints(members)}
    g = SampleGroup(kind, members, None)
    if kind == GREEDY:
        return g, spans
    ps = [rows[i].params for i in members]
    spans["temperatures"] = pack.floats([p.temperature for p in ps])
    g.seeded = [
        (j, p.sampling_seed + rows[i].seed_offset, rows[i].num_output)
        for j, (i, p) in enumerate(zip(members, ps))
        if p.sampling_seed is not None
    ]
    if kind == TOP_K:
        g.k = max(p.top_k for p in ps)
        g.need_top_k = any(p.top_k < g.k for p in ps)
        if g.need_top_k:
            spans["top_ks"] = pack.ints([p.top_k for p in ps])
    elif kind == SORT:
        g.k = vocab_size
    g.need_top_p = kind != PLAIN and any(p.top_p < 1.0 for p in ps)
    if g.need_top_p:
        spans["top_ps"] = pack.floats([p.top_p if p.top_p < 1.0 else float("inf") for p in ps])
    g.need_min_p = any(p.min_p > 0.0 for p in ps)
    if g.need_min_p:
        spans["min_ps"] = pack.floats([p.min_p for p in ps])
    return g, spans


class _Pack:
    """Host values gathered into one float32 and one int64 tensor, copied in two transfers."""

    def __init__(self) -> None:
        self._floats: list[float] = []
        self._ints: list[int] = []
        self._dev: dict[str, torch.Tensor] = {}

    def floats(self, values: list[float]) -> tuple[str, int, int]:
        start = len(self._floats)
        self._floats.extend(values)
        return ("f", start, len(self._floats))

    def ints(self, values: list[int]) -> tuple[str, int, int]:
        start = len(self._ints)
        self._ints.extend(values)
        return ("i", start, len(self._ints))

    def upload(self, device: torch.device) -> None:
        for key, values, dtype in (
            ("f", self._floats, torch.float32),
            ("i", self._ints, torch.int64),
        ):
            if values:
                self._dev[key] = to_device(values, dtype, device)

    def view(self, span: tuple[str, int, int] | None, column: bool = False) -> torch.Tensor | None:
        if span is None:
            return None
        key, start, end = span
        t = self._dev[key][start:end]
        return t.unsqueeze(1) if column else t
