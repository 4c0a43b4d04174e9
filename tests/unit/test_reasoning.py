"""Reasoning output (``--reasoning-parser``): splitting thinking from the answer, streamed and
not, and the gate that starts a constraint only when the thinking ends."""

from __future__ import annotations

import pytest
import torch

from radixlm.constrained.base import GrammarMatcher
from radixlm.constrained.reasoning_gate import ReasoningGate
from radixlm.reasoning import ReasoningStream, get_reasoning_format, prompt_phase

FMT = get_reasoning_format("qwen3")

CASES = [
    # (output, prompt leaves the model inside <think>, reasoning, content)
    ("<think>\nLet me add.\n</think>\n\nIt is 3.", False, "\nLet me add.\n", "It is 3."),
    ("Let me add.</think>It is 3.", True, "Let me add.", "It is 3."),
    ("It is 3.", False, "", "It is 3."),
    ("  <think>cut off while thin", False, "cut off while thin", ""),
    ("cut off while thinking", True, "cut off while thinking", ""),
    ("</think>", True, "", ""),
    ("a < b, so </thin", True, "a < b, so </thin", ""),
    ("<thi", False, "", "<thi"),
]


@pytest.mark.parametrize("text, inside, reasoning, content", CASES)
def test_split(text, inside, reasoning, content):
    assert FMT.split(text, inside) == (reasoning, content)


@pytest.mark.parametrize("text, inside, reasoning, content", CASES)
@pytest.mark.parametrize("step", [1, 2, 5])
def test_stream_equals_split(text, inside, reasoning, content, step):
    """Growing prefixes: deltas only append, and their sum is the non-streamed split."""
    stream = ReasoningStream(FMT, inside)
    thought, last_content = "", ""
    ends = list(range(step, len(text), step)) + [len(text)]
    for end in ends:
        delta, cumulative = stream.feed(text[:end], final=end == len(text))
        assert cumulative.startswith(last_content)  # content never shrinks
        thought += delta
        last_content = cumulative
        if end < len(text):
            assert not thought.endswith("</")  # a partial marker is held back
    assert (thought, last_content) == (reasoning, content)


def test_prompt_position_and_names():
    assert prompt_phase([5, 1, 7, 7], start_id=1, end_id=2) == "thinking"
    assert prompt_phase([1, 7, 2, 7], start_id=1, end_id=2) == "open"  # closed just now
    assert prompt_phase([1, 2, 7, 7, 7, 7, 7, 7], start_id=1, end_id=2) == "pending"  # history
    assert prompt_phase([7, 7], start_id=1, end_id=2) == "pending"
    assert FMT.starts_inside("<|im_start|>assistant\n<think>\n")
    assert not FMT.starts_inside("assistant\n<think>\n\n</think>\n\n")
    assert get_reasoning_format("deepseek_r1").name == "deepseek-r1"
    with pytest.raises(ValueError, match="known"):
        get_reasoning_format("nope")


class _Digits(GrammarMatcher):
    """An inner grammar over a toy vocabulary: tokens 10-19 are digits; after 3 digits only
    EOS (0)."""

    def __init__(self) -> None:
        self.n = 0

    def _allowed(self) -> set[int]:
        return {0} if self.n == 3 else set(range(10, 20))

    def fill_mask(self, mask, row):
        mask[row] = 0
        for t in self._allowed():
            mask[row, t // 32] |= 1 << (t % 32)

    def advance(self, token_id):
        if token_id not in self._allowed() or token_id == 0:
            return False
        self.n += 1
        return True

    def is_terminated(self):
        return self.n == 3

    def is_final(self):
        return self.n == 3

    def rollback(self, num_tokens):
        self.n -= num_tokens

    def copy(self):
        m = _Digits()
        m.n = self.n
        return m

    def forced_bytes(self):
        return b""


START, END = 40, 41


def _allowed(gate) -> set[int]:
    mask = torch.full((1, 2), -1, dtype=torch.int32)
    gate.fill_mask(mask, 0)
    bits = [(int(mask[0, t // 32]) >> (t % 32)) & 1 for t in range(64)]
    return {t for t, b in enumerate(bits) if b}


def test_gate_inside_thinking_then_constrained():
    gate = ReasoningGate(_Digits(), START, END, initial="thinking", stop_ids=(0, 63))
    assert _allowed(gate) == set(range(1, 63))  # thinking: anything but stopping
    for t in (3, 4, 55, END):
        assert gate.advance(t)
    assert gate.phase == "open" and gate.content_start == 4
    assert _allowed(gate) == set(range(10, 20))
    assert not gate.advance(3)  # the answer is constrained
    for t in (11, 12, 13):
        assert gate.advance(t)
    assert gate.is_terminated()
    twin = gate.copy()
    gate.rollback(5)  # 3 digits, </think> and one thinking token
    assert gate.phase == "thinking" and gate.inner.n == 0 and len(gate.log) == 2
    assert twin.is_terminated() and twin.inner.n == 3  # the copy is independent


def test_gate_pending_allows_the_answer_or_a_thinking_block():
    gate = ReasoningGate(_Digits(), START, END, initial="pending")
    assert _allowed(gate) == set(range(10, 20)) | {START}
    assert gate.advance(START) and gate.phase == "thinking"
    gate.rollback(1)
    assert gate.phase == "pending"
    assert gate.advance(15) and gate.phase == "open" and gate.content_start == 0
    assert START not in _allowed(gate)


def test_gate_mask_bit_31():
    gate = ReasoningGate(_Digits(), 31, END, initial="pending")
    assert 31 in _allowed(gate)
