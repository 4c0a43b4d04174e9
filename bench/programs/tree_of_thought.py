"""Tree of thought with ``fork``: generate a question, explore three approaches, pick one.

Each program gets a GSM8K test question as a seed. It asks the model for a new problem in the
same style (``gen``), then ``fork(3)``: every branch proposes an approach and works it out (two
``gen`` calls), the branches are joined (their variables gathered on the parent), the three
candidates are written back into the parent, and ``select`` picks the most promising one.

What the runtime can exploit: the instruction header is shared by every program; ``fork``
first prefills the parent's text (``cache_prefix``), so the three branches start from a cached
prefix instead of prefilling it three times; the final ``select`` re-reads the whole tree.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from base import Workload, read_jsonl, take

import radixlm_lang as sgl

BRANCHES = 3
HEADER = (
    "You are a careful math tutor. Given an example problem, you write a new problem of the "
    "same kind, then explore several different approaches to solving it, work each one out "
    "step by step, and finally judge which approach is the most promising.\n\n"
)


@sgl.function
def tree_of_thought(
    s: Any, seed: str, question_tokens: int, plan_tokens: int, work_tokens: int
) -> None:
    s += HEADER + "Example problem: " + seed + "\n"
    s += "New problem:" + sgl.gen("question", max_tokens=question_tokens, stop="\n") + "\n"
    s += f"Let us consider {BRANCHES} different approaches.\n"
    forks = s.fork(BRANCHES)
    forks += lambda i: (
        f"Approach {i + 1}:"
        + sgl.gen("plan", max_tokens=plan_tokens, stop="\n")
        + "\nWorking it out:"
        + sgl.gen("work", max_tokens=work_tokens, stop="\n")
    )
    forks.join()
    for i, (plan, work) in enumerate(zip(s["plan"], s["work"])):
        s += f"Approach {i + 1}:{plan}\nWorking it out:{work}\n"
    s += "The most promising approach is number"
    s += sgl.select("best", choices=[f" {i + 1}" for i in range(BRANCHES)])


def load(args: argparse.Namespace, tok: Any) -> Workload:
    rows = take(read_jsonl(Path(args.gsm8k)), args.num_programs, args.gsm8k)
    lengths = {
        "question_tokens": args.tot_question_tokens,
        "plan_tokens": args.tot_plan_tokens,
        "work_tokens": args.tot_work_tokens,
    }
    return Workload(
        "tree_of_thought",
        tree_of_thought,
        [{"seed": r["question"], **lengths} for r in rows],
        f"GSM8K seed -> gen question ({args.tot_question_tokens} tok) -> fork {BRANCHES} x "
        f"(plan {args.tot_plan_tokens} + work {args.tot_work_tokens} tok) -> join -> select",
    )
