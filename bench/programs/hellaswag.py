"""HellaSwag with ``select`` among the four endings (the SGLang paper's HellaSwag program).

Data: ``hellaswag_val_full.txt.bz2``, six lines per example: the context, the index (0-3) of
the right ending, then the four endings. The first ``--hellaswag-shots`` examples, each context
followed by its right ending, form the few-shot prefix every program shares; each program is a
later example's context, and ``select`` scores its four endings in one batched request.
"""

from __future__ import annotations

import argparse
import bz2
from pathlib import Path
from typing import Any

from base import Workload, accuracy, take

import radixlm_lang as sgl


@sgl.function
def hellaswag(s: Any, few_shot: str, context: str, endings: list[str]) -> None:
    s += few_shot + context
    s += sgl.select("ending", choices=endings)


def read_examples(path: Path) -> list[tuple[str, int, list[str]]]:
    """(context, right ending index, four endings) per example."""
    with bz2.open(path, "rt") as f:
        lines = [line.rstrip("\n") for line in f]
    if len(lines) % 6:
        raise SystemExit(f"error: {path}: {len(lines)} lines, not a multiple of 6")
    return [(lines[i], int(lines[i + 1]), lines[i + 2 : i + 6]) for i in range(0, len(lines), 6)]


def load(args: argparse.Namespace, tok: Any) -> Workload:
    examples = read_examples(Path(args.hellaswag))
    shots, rest = examples[: args.hellaswag_shots], examples[args.hellaswag_shots :]
    few_shot = "".join(f"{ctx} {ends[label]}\n\n" for ctx, label, ends in shots)
    arguments: list[dict[str, Any]] = []
    labels: list[str] = []
    for ctx, label, ends in rest:
        endings = [" " + e for e in ends]
        if len(tok.encode(few_shot + ctx + max(endings, key=len))) > args.max_prompt_len:
            continue
        arguments.append({"few_shot": few_shot, "context": ctx, "endings": endings})
        labels.append(endings[label])
    arguments = take(arguments, args.num_programs, args.hellaswag)
    return Workload(
        "hellaswag",
        hellaswag,
        arguments,
        f"{args.hellaswag_shots}-shot, select among 4 endings",
        quality=accuracy("ending", labels[: args.num_programs]),
    )
