"""Engine fixtures: every engine a test creates is checked for leaked KV slots/rows afterwards."""

from __future__ import annotations

import pytest
import torch

import radixlm

COMPILE_TIMEOUT = 600.0


@pytest.fixture
def make_engine():
    engines: list[radixlm.Engine] = []

    def factory(model_path: str | None = None, **options) -> radixlm.Engine:
        # A generous compile timeout: a grammar compile on a loaded CI machine must not fail a
        # test that is not about timeouts (those pass their own).
        options.setdefault("grammar_compile_timeout", COMPILE_TIMEOUT)
        e = radixlm.Engine(model_path, **options)
        engines.append(e)
        return e

    yield factory
    for e in engines:
        e.scheduler.check_memory_invariants()
        e.shutdown()


@pytest.fixture(scope="session")
def random_prompts() -> list[list[int]]:
    """8 prompts of different lengths (token ids 3..511; 0-2 are special)."""
    g = torch.Generator().manual_seed(1234)
    return [
        torch.randint(3, 512, (n,), generator=g).tolist() for n in (1, 5, 9, 16, 27, 40, 63, 90)
    ]


def hf_greedy(model_path: str, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Reference: transformers generate, one prompt at a time (no padding), never stopping."""
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    outs = []
    for ids in prompts:
        out = hf.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        outs.append(out[0, len(ids) :].tolist())
    return outs


def hf_logprobs(model_path: str, ids: list[int]) -> torch.Tensor:
    """log_softmax of transformers' logits over a full sequence: [len(ids), vocab]."""
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)


def assert_input_logprobs(inputs: list, ids: list[int], ref: torch.Tensor, start: int) -> None:
    """``inputs`` (from meta_info) score prompt tokens ``ids[start:]`` as transformers does."""
    assert [t[1] for t in inputs] == ids[start:]
    for j, (lp, tid, _) in enumerate(inputs):
        if start + j == 0:
            assert lp is None
        else:
            assert abs(lp - float(ref[start + j - 1, tid])) < 1e-4
