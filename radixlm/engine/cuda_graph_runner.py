"""``CudaGraphRunner``: decode steps replayed from captured CUDA graphs.

A decode step of a small batch is bound by kernel-launch overhead (hundreds of kernels, each a
few µs of work); replaying a captured graph launches them all at once. Decode batches of up to
``max_bs`` requests are padded to the nearest captured size (1, 2, 4, 8, then multiples of 8)
and replayed; larger batches and every extend batch run eagerly.

Static state (allocated once, shared by every captured size; graphs share one memory pool):
- inputs ``input_ids``, ``positions``, ``out_cache_loc``, ``req_pool_indices``, ``seq_lens``
  (``[max_bs]`` each) — a replay copies the batch into rows ``:bs`` and pads ``bs:padded``;
- the attention backend's metadata buffers (``init_cuda_graph_state`` /
  ``load_graph_metadata``), filled from the batch's snapshot right before each replay;
- one output buffer per captured size (views of the pool).

Invariants:
- Replay runs on the forward thread, in batch order, so filling the static buffers for batch
  N+1 can never overwrite what batch N's replay still reads (the copies are queued on the same
  stream after N's graph).
- Padding rows are requests of KV length 1 at position 0 that write their K/V to slot 0 and
  read only slot 0; their outputs are dropped. (Slot 0 is the pool's padding slot; only the
  torch_native backend relies on it holding zeros, and it never runs graphs.)
- Eager and graph outputs are identical for the same batch (tested on CUDA; on CPU the same
  padding logic is tested with :class:`EagerGraphs`, which replays the captured callable).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch

from radixlm.engine.forward_batch import ForwardBatch, ForwardMode

if TYPE_CHECKING:
    from radixlm.engine.model_runner import ModelRunner

logger = logging.getLogger(__name__)


def capture_sizes(max_bs: int) -> list[int]:
    """Batch sizes to capture: 1, 2, 4, 8, then every multiple of 8 up to ``max_bs``."""
    sizes = [s for s in (1, 2, 4) if s < max_bs] + list(range(8, max_bs + 1, 8))
    if not sizes or sizes[-1] != max_bs:
        sizes.append(max_bs)
    return sorted(set(sizes))


def padded_size(bs: int, sizes: list[int]) -> int | None:
    """The smallest captured size >= ``bs`` (None: run eagerly)."""
    for s in sizes:
        if s >= bs:
            return s
    return None


class GraphOps(Protocol):
    """How graphs are captured and replayed (CUDA, or an eager stand-in for CPU tests)."""

    def capture(self, fn: Callable[[], torch.Tensor]) -> tuple[object, torch.Tensor]: ...

    def replay(self, graph: object) -> None: ...


class CudaGraphs:
    """Real CUDA graphs: a warm-up run on a side stream, then capture into a shared pool."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(device)

    def capture(self, fn: Callable[[], torch.Tensor]) -> tuple[object, torch.Tensor]:
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for _ in range(2):  # lazy inits (cuBLAS handles, Triton autotune) out of the graph
                fn()
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            out = fn()
        torch.cuda.synchronize(self.device)
        return graph, out

    def replay(self, graph: object) -> None:
        graph.replay()


class EagerGraphs:
    """Stand-in for tests without CUDA: "capture" keeps the callable, "replay" reruns it into
    the captured output buffer — the same static-buffer protocol as a real graph."""

    def capture(self, fn: Callable[[], torch.Tensor]) -> tuple[object, torch.Tensor]:
        out = fn()
        return (fn, out), out

    def replay(self, graph: object) -> None:
        fn, out = graph
        out.copy_(fn())


class CudaGraphRunner:
    def __init__(self, runner: ModelRunner, max_bs: int, ops: GraphOps | None = None) -> None:
        backend = runner.attn_backend
        if not backend.supports_cuda_graph:
            raise ValueError(f"{type(backend).__name__} cannot run inside CUDA graphs")
        self.runner = runner
        self.device = runner.device
        self.sizes = capture_sizes(max_bs)
        self.max_bs = self.sizes[-1]
        self.ops = ops if ops is not None else CudaGraphs(self.device)
        dev, n = self.device, self.max_bs
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(n, dtype=torch.int64, device=dev)
        self.out_cache_loc = torch.zeros(n, dtype=torch.int64, device=dev)
        self.req_pool_indices = torch.zeros(n, dtype=torch.int64, device=dev)
        self.seq_lens = torch.ones(n, dtype=torch.int64, device=dev)
        # KV tokens of the largest padded batch: every row at the longest request length.
        max_kv_tokens = n * runner.limits.max_req_len
        backend.init_cuda_graph_state(n, max_kv_tokens, dev)
        self.graphs: dict[int, tuple[object, torch.Tensor]] = {}

    @torch.inference_mode()
    def capture(self) -> float:
        """Capture every size (largest first, so smaller ones reuse its pool); returns MB used."""
        used0 = _device_used(self.device)
        for bs in reversed(self.sizes):
            fb = self._static_batch(bs)
            self.runner.attn_backend.init_forward_metadata(fb)  # snapshot of the padding rows
            fb.attn_metadata = self.runner.attn_backend.load_graph_metadata(fb, bs)
            self.graphs[bs] = self.ops.capture(
                lambda fb=fb: self.runner.model(fb, self.runner.attn_backend)
            )
        mb = (_device_used(self.device) - used0) / 2**20
        logger.info(
            "CUDA graphs: %d decode batch sizes up to %d captured, %.1f MB",
            len(self.sizes),
            self.max_bs,
            mb,
        )
        return mb

    def can_run(self, fb: ForwardBatch) -> bool:
        return fb.mode == ForwardMode.DECODE and fb.batch_size <= self.max_bs

    def replay(self, fb: ForwardBatch) -> torch.Tensor:
        """Hidden states ``[bs, hidden]`` of decode batch ``fb`` (its metadata snapshot is set)."""
        bs = fb.batch_size
        padded = padded_size(bs, self.sizes)
        self.input_ids[:bs].copy_(fb.input_ids)
        self.positions[:bs].copy_(fb.positions)
        self.out_cache_loc[:bs].copy_(fb.out_cache_loc)
        self.req_pool_indices[:bs].copy_(fb.req_pool_indices)
        self.seq_lens[:bs].copy_(fb.seq_lens)
        if padded > bs:
            for buf in (self.input_ids, self.positions, self.out_cache_loc, self.req_pool_indices):
                buf[bs:padded].zero_()
            self.seq_lens[bs:padded].fill_(1)
        self.runner.attn_backend.load_graph_metadata(fb, padded)
        graph, out = self.graphs[padded]
        self.ops.replay(graph)
        return out[:bs]

    def _static_batch(self, bs: int) -> ForwardBatch:
        """A decode batch of ``bs`` padding requests over the static input buffers."""
        return ForwardBatch(
            mode=ForwardMode.DECODE,
            input_ids=self.input_ids[:bs],
            positions=self.positions[:bs],
            out_cache_loc=self.out_cache_loc[:bs],
            req_pool_indices=self.req_pool_indices[:bs],
            seq_lens=self.seq_lens[:bs],
            seq_lens_cpu=[1] * bs,
            extend_prefix_lens_cpu=[0] * bs,
            extend_seq_lens_cpu=[1] * bs,
            req_to_token_pool=self.runner.req_to_token_pool,
            kv_pool=self.runner.kv_pool,
        )


def _device_used(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    free, total = torch.cuda.mem_get_info(device)
    return total - free
