"""How ``select`` picks a choice from token logprobs (SGLang's three methods, same math).

Inputs, per choice ``i`` (as a native backend gets them from ``/generate`` with
``return_logprob=True, return_text_in_logprobs=True``):

* ``input_token_logprobs[i]``: ``[[logprob, token_id, token_text], ...]`` for the tokens of
  ``prompt + choice_i`` from ``logprob_start_len`` on, after ``heal_and_normalize`` dropped the
  leading prompt token that was not re-tokenized together with the choice; ``logprob`` may be
  ``None`` (the first token of a prompt has none).
* ``normalized_prompt_logprobs[i]``: the mean logprob of those tokens (``normalized_logprob``).
* ``output_token_logprobs[i]``: passed through into the decision's meta_info.
* ``unconditional_token_logprobs[i]`` (only for ``unconditional_likelihood_normalized``): the same
  list for the choice's tokens scored with no context; its first logprob (None) counts as 0.

Each method is a callable taking those keyword arguments and returning a ``ChoicesDecision``.
Ties go to the earliest choice.
"""

from __future__ import annotations

from typing import Any

from radixlm_lang.backend.base import ChoicesDecision

TokenLogprob = list[Any]  # [logprob: float | None, token_id: int, token_text: str | None]


def normalized_logprob(entries: list[TokenLogprob]) -> float:
    """Mean of the logprobs that are neither None nor exactly zero (0.0 if there are none)."""
    values = [e[0] for e in entries if e[0]]
    return sum(values) / len(values) if values else 0.0


def heal_and_normalize(
    prefix: str, per_choice: list[list[TokenLogprob]]
) -> tuple[list[list[TokenLogprob]], list[float]]:
    """Step 3 of §1.9: each choice's entries start two tokens before the prefix/choice boundary.
    If the first entry's text is still a suffix of ``prefix`` (no token healing happened), drop it
    and correct the mean as SGLang does: ``(mean * len - dropped) / (len - 1)``."""
    kept: list[list[TokenLogprob]] = []
    means: list[float] = []
    for entries in per_choice:
        mean = normalized_logprob(entries)
        first = entries[0] if entries else None
        if (
            first is not None
            and len(entries) > 1
            and first[2] is not None
            and prefix.endswith(first[2])
        ):
            mean = (mean * len(entries) - (first[0] or 0.0)) / (len(entries) - 1)
            entries = entries[1:]
        kept.append(entries)
        means.append(mean)
    return kept, means


def _argmax(values: list[float]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


class ChoicesSamplingMethod:
    """Base of the selection methods: ``_pick`` returns the winning index and any extra
    ``meta_info``; ``requires_unconditional_logprobs`` asks the backend for the third
    (context-free) scoring call."""

    requires_unconditional_logprobs: bool = False

    def __call__(
        self,
        *,
        choices: list[str],
        normalized_prompt_logprobs: list[float],
        input_token_logprobs: list[list[TokenLogprob]],
        output_token_logprobs: list[list[TokenLogprob]],
        unconditional_token_logprobs: list[list[TokenLogprob]] | None = None,
    ) -> ChoicesDecision:
        best, extra = self._pick(
            normalized_prompt_logprobs, input_token_logprobs, unconditional_token_logprobs
        )
        meta = {
            "normalized_prompt_logprobs": normalized_prompt_logprobs,
            "input_token_logprobs": input_token_logprobs,
            "output_token_logprobs": output_token_logprobs,
            **extra,
        }
        return ChoicesDecision(choices[best], meta)

    def _pick(
        self,
        normalized: list[float],
        logprobs: list[list[TokenLogprob]],
        unconditional: list[list[TokenLogprob]] | None,
    ) -> tuple[int, dict[str, Any]]:
        raise NotImplementedError


class TokenLengthNormalized(ChoicesSamplingMethod):
    """The choice with the highest mean token logprob."""

    def _pick(self, normalized, logprobs, unconditional):
        return _argmax(normalized), {}


class GreedyTokenSelection(ChoicesSamplingMethod):
    """Position by position, keep the choices whose logprob there is the maximum, until one is
    left. Shorter choices are padded with their own mean; a None logprob counts as 0."""

    def _pick(self, normalized, logprobs, unconditional):
        width = max((len(e) for e in logprobs), default=0)
        matrix: list[list[float]] = []
        for entries in logprobs:
            row = [e[0] or 0.0 for e in entries]
            mean = sum(row) / len(row) if row else 0.0
            matrix.append(row + [mean] * (width - len(row)))
        remaining = list(range(len(logprobs)))
        for j in range(width):
            top = max(matrix[i][j] for i in remaining)
            remaining = [i for i in remaining if matrix[i][j] == top]
            if len(remaining) == 1:
                break
        return remaining[0], {"greedy_logprob_matrix": matrix}


class UnconditionalLikelihoodNormalized(ChoicesSamplingMethod):
    """The choice with the highest mean of (conditional − unconditional) token logprobs. The
    unconditional list's first value (None: no context) counts as 0. NOTE: when the two lists of
    a choice differ in length they are aligned on their last tokens (SGLang requires equal
    lengths)."""

    requires_unconditional_logprobs = True

    def _pick(self, normalized, logprobs, unconditional):
        if unconditional is None:
            raise ValueError("unconditional_likelihood_normalized needs unconditional logprobs")
        scores: list[float] = []
        for cond, uncond in zip(logprobs, unconditional):
            u = [e[0] for e in uncond]
            if u:
                u[0] = u[0] or 0.0
            k = min(len(cond), len(u))
            diffs = [(c[0] or 0.0) - (x or 0.0) for c, x in zip(cond[-k:] if k else [], u[-k:])]
            scores.append(sum(diffs) / len(diffs) if diffs else 0.0)
        extra = {
            "unconditional_token_logprobs": unconditional,
            "normalized_unconditional_prompt_logprobs": scores,
        }
        return _argmax(scores), extra


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()
