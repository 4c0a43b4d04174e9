"""CUDA-graph decode: padding to captured sizes and static buffers give the eager result.

Without CUDA the graph is the :class:`EagerGraphs` stand-in (it reruns the captured callable
over the static buffers) and the Triton kernels run in the interpreter, so the padding, the
static-buffer copies and the backend's graph metadata are checked on every machine; the
``gpu`` tests capture real CUDA graphs.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from radixlm.config import EngineConfig  # noqa: E402
from radixlm.engine.cuda_graph_runner import EagerGraphs, capture_sizes, padded_size  # noqa: E402
from radixlm.engine.forward_batch import ForwardBatch, ForwardMode  # noqa: E402
from radixlm.engine.model_runner import ModelRunner  # noqa: E402


def test_capture_sizes() -> None:
    assert capture_sizes(1) == [1]
    assert capture_sizes(3) == [1, 2, 3]
    assert capture_sizes(8) == [1, 2, 4, 8]
    assert capture_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert capture_sizes(256)[-3:] == [240, 248, 256]
    sizes = capture_sizes(20)
    assert [padded_size(b, sizes) for b in (1, 3, 5, 9, 17, 20, 21)] == [1, 4, 8, 16, 20, 20, None]


def _runner(model_path: str, device: torch.device) -> ModelRunner:
    cfg = EngineConfig.from_options(
        model_path=model_path,
        device=device.type,
        dtype="float32",
        attention_backend="triton",
        max_total_tokens=256,
        max_running_requests=8,
        disable_cuda_graph=True,
    )
    return ModelRunner(cfg)


def _prefill(runner: ModelRunner, prompts: list[list[int]]) -> list[int]:
    """Extend ``prompts`` into fresh rows; returns each request's row."""
    dev = runner.device
    rows, slot_lists = [], []
    for p in prompts:
        row = runner.req_to_token_pool.alloc()
        slots = runner.kv_pool.allocator.alloc(len(p))
        runner.req_to_token_pool.write(row, 0, slots)
        rows.append(row)
        slot_lists.append(slots)
    lens = [len(p) for p in prompts]
    fb = ForwardBatch(
        mode=ForwardMode.EXTEND,
        input_ids=torch.tensor([t for p in prompts for t in p], device=dev),
        positions=torch.tensor([i for n in lens for i in range(n)], device=dev),
        out_cache_loc=torch.cat(slot_lists).to(dev),
        req_pool_indices=torch.tensor(rows, device=dev),
        seq_lens=torch.tensor(lens, device=dev),
        seq_lens_cpu=lens,
        extend_prefix_lens_cpu=[0] * len(lens),
        extend_seq_lens_cpu=lens,
        req_to_token_pool=runner.req_to_token_pool,
        kv_pool=runner.kv_pool,
    )
    runner.forward(fb)
    return rows


def _decode_batch(runner: ModelRunner, rows: list[int], lens: list[int], ids: list[int]):
    dev = runner.device
    slots = runner.kv_pool.allocator.alloc(len(rows))
    runner.req_to_token_pool.write_tokens(rows, lens, slots)
    seq = [n + 1 for n in lens]
    fb = ForwardBatch(
        mode=ForwardMode.DECODE,
        input_ids=torch.tensor(ids, device=dev),
        positions=torch.tensor(lens, device=dev),
        out_cache_loc=slots.to(dev),
        req_pool_indices=torch.tensor(rows, device=dev),
        seq_lens=torch.tensor(seq, device=dev),
        seq_lens_cpu=seq,
        extend_prefix_lens_cpu=list(lens),
        extend_seq_lens_cpu=[1] * len(rows),
        req_to_token_pool=runner.req_to_token_pool,
        kv_pool=runner.kv_pool,
    )
    runner.prepare(fb)
    return fb


def _check_graph_equals_eager(runner: ModelRunner, ops, max_bs: int) -> None:
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 500, (n,), generator=g).tolist() for n in (5, 17, 9)]
    rows = _prefill(runner, prompts)
    lens = [len(p) for p in prompts]
    eager_fb = _decode_batch(runner, rows, lens, [7, 8, 9])
    eager = runner.forward(eager_fb).clone()
    runner.init_cuda_graphs(ops, max_bs=max_bs)
    assert runner.graph_runner.can_run(eager_fb)
    # The same step again (rewrites the same K/V), now replayed padded from 3 to 4 rows.
    graph = runner.forward(_decode_batch_reusing(runner, eager_fb))
    torch.testing.assert_close(graph, eager, rtol=1e-5, atol=1e-5)
    # A second, different step through the same graph: lengths grew, another token each.
    lens2 = [n + 1 for n in lens]
    fb2 = _decode_batch(runner, rows, lens2, [10, 11, 12])
    replayed = runner.forward(fb2).clone()
    graph_runner, runner.graph_runner = runner.graph_runner, None
    fb2.attn_metadata = None
    runner.prepare(fb2)
    torch.testing.assert_close(replayed, runner.forward(fb2), rtol=1e-5, atol=1e-5)
    runner.graph_runner = graph_runner


def _decode_batch_reusing(runner: ModelRunner, fb: ForwardBatch) -> ForwardBatch:
    again = ForwardBatch(**{**fb.__dict__, "attn_metadata": None})
    runner.prepare(again)
    return again


def test_graph_padding_matches_eager_cpu(tiny_models) -> None:
    runner = _runner(tiny_models["llama"], torch.device("cpu"))
    _check_graph_equals_eager(runner, EagerGraphs(), max_bs=4)
    assert runner.graph_runner.sizes == [1, 2, 4]


def test_eager_when_batch_exceeds_captured(tiny_models) -> None:
    runner = _runner(tiny_models["llama"], torch.device("cpu"))
    runner.init_cuda_graphs(EagerGraphs(), max_bs=2)
    rows = _prefill(runner, [[5, 6, 7], [8, 9], [10]])
    fb = _decode_batch(runner, rows, [3, 2, 1], [1, 2, 3])
    assert not runner.graph_runner.can_run(fb)
    assert runner.forward(fb).shape[0] == 3


@pytest.mark.gpu
def test_cuda_graph_matches_eager(tiny_models, cuda) -> None:
    runner = _runner(tiny_models["llama"], cuda)
    _check_graph_equals_eager(runner, None, max_bs=8)


def test_engine_triton_with_graphs_matches_torch_native(tiny_models) -> None:
    """End to end: greedy outputs with the Triton backend and (stand-in) graphs equal the
    torch_native engine's, including prefix-cache hits and batches larger than captured."""
    import radixlm

    prompts = [[5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 11], [40, 41], [5, 6, 7, 8, 9, 10, 12]]
    params = {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True}
    outs = {}
    for backend in ("torch_native", "triton"):
        engine = radixlm.Engine(
            tiny_models["qwen2"], attention_backend=backend, dtype="float32", max_total_tokens=512
        )
        try:
            if backend == "triton":
                engine.runner.init_cuda_graphs(EagerGraphs(), max_bs=2)
            outs[backend] = [
                r["output_ids"] for r in engine.generate(input_ids=prompts, sampling_params=params)
            ]
            outs[backend] += [
                engine.generate(input_ids=prompts[0], sampling_params=params)["output_ids"]
            ]
        finally:
            engine.shutdown()
    assert outs["triton"] == outs["torch_native"]
