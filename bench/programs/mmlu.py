"""MMLU k-shot with ``select``: the SGLang paper's MMLU program.

Data: ``<mmlu-dir>/dev/<subject>_dev.csv`` (the shots) and ``test/<subject>_test.csv`` (the
questions), CSV with columns ``question, choice0..choice3, answer`` (the answer's index 0-3). Each program is one test
question behind its subject's k-shot prompt (the standard header + the first k dev examples), and
``select`` picks among `` A`` .. `` D``. Programs of one subject share the whole k-shot prefix, so
the radix cache turns each question's prefill into "the question only"; ``select`` then scores
the four choices in one batched request that hits the prompt just prefilled.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Any

from base import Workload, accuracy

import radixlm_lang as sgl

CHOICES = [" A", " B", " C", " D"]
HEADER = "The following are multiple choice questions (with answers) about {}.\n\n"


@sgl.function
def mmlu(s: Any, examples: str, question: str) -> None:
    s += examples + question
    s += sgl.select("answer", choices=CHOICES)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _letter(row: dict[str, str]) -> str:
    return "ABCD"[int(row["answer"])]


def _format(row: dict[str, str], with_answer: bool) -> str:
    """The format of ``bench/prefix_sharing.py`` (and SGLang's MMLU benchmark)."""
    text = row["question"] + "".join(f"\n{c}. {row[f'choice{i}']}" for i, c in enumerate("ABCD"))
    return text + "\nAnswer:" + (f" {_letter(row)}\n\n" if with_answer else "")


def load(args: argparse.Namespace, tok: Any) -> Workload:
    """``--num-programs`` questions spread over the first ``--mmlu-subjects`` subjects (in
    alphabetical order, ceil(n / subjects) each); prompts over ``--max-prompt-len`` are skipped."""
    root = Path(args.mmlu_dir)
    per_subject = math.ceil(args.num_programs / args.mmlu_subjects)
    arguments: list[dict[str, Any]] = []
    labels: list[str] = []
    subjects: list[str] = []
    for test_csv in sorted((root / "test").glob("*_test.csv")):
        subject = test_csv.name.removesuffix("_test.csv")
        shots = _rows(root / "dev" / f"{subject}_dev.csv")[: args.mmlu_shots]
        examples = HEADER.format(subject.replace("_", " "))
        examples += "".join(_format(r, True) for r in shots)
        taken = 0
        for row in _rows(test_csv):
            question = _format(row, False)
            if len(tok.encode(examples + question)) + 2 > args.max_prompt_len:
                continue
            arguments.append({"examples": examples, "question": question})
            labels.append(" " + _letter(row))
            taken += 1
            if taken == per_subject or len(arguments) == args.num_programs:
                break
        subjects.append(subject)
        if len(arguments) == args.num_programs:
            break
    if len(arguments) < args.num_programs:
        raise SystemExit(f"error: {root} has only {len(arguments)} usable MMLU questions")
    return Workload(
        "mmlu",
        mmlu,
        arguments,
        f"{args.mmlu_shots}-shot, {len(subjects)} subjects ({', '.join(subjects)}), "
        f"select among A/B/C/D",
        quality=accuracy("answer", labels),
        openai_ok=True,
    )
