"""Multi-turn chat: user / assistant turns, each assistant turn a ``gen``.

Each program is one conversation of ``--chat-turns`` user turns taken from MT-bench
(``question.jsonl``: conversation ``i`` uses question ``i``'s two turns, then question ``i+1``'s,
and so on), under a shared system prompt, rendered with the server model's chat template. Turn
``k`` re-sends the whole conversation so far, so with the radix cache only the new user turn
(and the last answer's final token) is prefilled.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from base import Workload, read_jsonl

import radixlm_lang as sgl

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@sgl.function
def multi_turn_chat(s: Any, turns: list[str], answer_tokens: int) -> None:
    s += sgl.system(SYSTEM)
    for i, turn in enumerate(turns):
        s += sgl.user(turn)
        s += sgl.assistant(sgl.gen(f"answer_{i}", max_tokens=answer_tokens))


def load(args: argparse.Namespace, tok: Any) -> Workload:
    questions = read_jsonl(Path(args.mt_bench))
    all_turns = [t for q in questions for t in q["turns"]]
    arguments = []
    for i in range(args.num_programs):
        start = (2 * i) % len(all_turns)
        turns = (all_turns[start:] + all_turns[:start])[: args.chat_turns]
        arguments.append({"turns": turns, "answer_tokens": args.chat_answer_tokens})
    return Workload(
        "multi_turn_chat",
        multi_turn_chat,
        arguments,
        f"{args.chat_turns} user turns (MT-bench), {args.chat_answer_tokens} tokens per answer",
    )
