"""What every program module of ``bench/programs/`` returns: a ``Workload``.

A workload is one ``radixlm_lang`` program (an ``@sgl.function``), the arguments of each of its
``--num-programs`` runs, and an optional quality check over the finished states (accuracy for
MMLU / HellaSwag, schema validity for JSON extraction). ``run.py`` times ``run_batch`` over the
arguments on each system.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A quality check: finished states -> (metric name, value in [0, 1]).
Quality = Callable[[list[Any]], tuple[str, float]]


@dataclass
class Workload:
    """One program and its batch of arguments."""

    name: str
    function: Any  # radixlm_lang.function.SglFunction
    arguments: list[dict[str, Any]]
    description: str
    quality: Quality | None = None
    run_kwargs: dict[str, Any] = field(default_factory=dict)  # sampling defaults for run_batch
    openai_ok: bool = False  # also run through the OpenAI-compatible backend


def accuracy(var: str, labels: list[str]) -> Quality:
    """Share of states whose ``var`` equals the label (stripped)."""

    def check(states: list[Any]) -> tuple[str, float]:
        good = sum(_var(s, var).strip() == label.strip() for s, label in zip(states, labels))
        return "accuracy", good / max(1, len(labels))

    return check


def _var(state: Any, name: str) -> str:
    """A state's variable, or "" when the program failed before producing it."""
    try:
        return str(state[name])
    except Exception:  # noqa: BLE001 - a failed program counts as wrong
        return ""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def take(items: list[Any], n: int, what: str, flag: str = "--num-programs") -> list[Any]:
    """The first ``n`` items, or exit naming the data set and flag when there are fewer."""
    if len(items) < n:
        raise SystemExit(f"error: {what} has only {len(items)} usable items, {flag} is {n}")
    return items[:n]
