"""``BatchExecutor``: runs launched batches on the model — forward, sample, logprobs — in order.

A batch reaches the executor fully prepared by the scheduler thread: its ``ForwardBatch`` (with
attention metadata snapshotted from the pools), its ``SamplingBatchInfo`` and, under overlap
scheduling, ``FutureTokens`` naming the input ids that the previous batch is still sampling.

Two ways to run:
- ``run(batch)`` inline on the caller's thread (``--disable-overlap-schedule``);
- ``submit(batch)`` on one worker thread (the default). While batch N runs there, the scheduler
  thread receives requests, builds batch N+1 and then processes N's result.

Invariant: batches execute strictly in submission order on one thread, so every KV write and
read of batch N happens before any of batch N+1. That is what makes it safe for the scheduler
to free, evict and re-allocate slots of batch N while N is still running: only later batches
can be given those slots. Placeholder input ids of batch N+1 are resolved from N's sampled ids
(a device tensor) right before N+1's forward — on CUDA this is an on-stream gather, no host
sync (the same design carries to a dedicated forward stream).

No host sync on the forward thread: the executor only queues work. Results leave the device by
non-blocking copies into pinned memory, and the scheduler thread waits for them only when it
processes the batch (``BatchResult.host()``), by which time the next batch is already queued,
so the device never idles between consecutive decode steps.

The executor never touches scheduler state (``Req`` objects, pools' free lists, the tree): its
only outputs are the ``BatchResult`` and ``batch.sampled_ids``.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from radixlm.engine.model_runner import ModelRunner
from radixlm.engine.sampler import Sampler
from radixlm.engine.transfer import to_device, to_host
from radixlm.scheduler.batch import ScheduleBatch


@dataclass
class HostOutputs:
    """A batch's results as plain Python lists (what the scheduler thread consumes)."""

    next_ids: list[int] = field(default_factory=list)  # one per plan.sample_rows
    logprobs: list[float] | None = None  # raw logprob of each sampled id
    top_logprobs: list[list[float]] | None = None
    top_ids: list[list[int]] | None = None
    # Prompt logprobs: one value per row of every plan.input_spans entry, in order.
    input_logprobs: list[float] = field(default_factory=list)
    input_top_logprobs: list[list[float]] = field(default_factory=list)
    input_top_ids: list[list[int]] = field(default_factory=list)


class BatchResult:
    """One batch's results, copied to the host without stalling the thread that launched them.

    The executor ``stage``s device tensors (a device→pinned-host copy starts at once) and
    ``seal``s the result (on CUDA: records an event after the copies). ``host()`` — called by
    the scheduler thread when it processes the batch — waits on that event only then, and
    turns the copies into lists once. On CPU the tensors are already on the host: no copy, no
    event.

    Timing: ``forward_cpu_seconds`` is the launching thread's CPU time. ``forward_seconds``
    (valid after ``host()``) is the wall time of forward + sampling on CPU; on CUDA, where the
    launching thread only queues kernels, it is the device time between two events around the
    batch's work (forward, sampling and the copies).
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self.forward_seconds = 0.0
        self.forward_cpu_seconds = 0.0
        self._staged: dict[str, torch.Tensor] = {}
        self._cuda = device is not None and device.type == "cuda"
        self._start: torch.cuda.Event | None = None
        self._done: torch.cuda.Event | None = None
        self._host: HostOutputs | None = None
        if self._cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()

    def stage(self, name: str, tensor: torch.Tensor) -> None:
        """Start copying ``tensor`` to the host as field ``name`` of :class:`HostOutputs`."""
        self._staged[name] = to_host(tensor)

    def seal(self, wall_seconds: float, cpu_seconds: float) -> None:
        """Mark the end of the batch's device work (call after the last ``stage``)."""
        self.forward_cpu_seconds = cpu_seconds
        if self._cuda:
            self._done = torch.cuda.Event(enable_timing=True)
            self._done.record()
        else:
            self.forward_seconds = wall_seconds

    def host(self) -> HostOutputs:
        """The results as lists; on CUDA, waits for this batch's copies (first call only)."""
        if self._host is None:
            if self._done is not None:
                self._done.synchronize()
                self.forward_seconds = self._start.elapsed_time(self._done) / 1e3
            out = HostOutputs()
            for name, t in self._staged.items():
                setattr(out, name, t.tolist())
            self._staged.clear()
            self._host = out
        return self._host


class ForwardThread:
    """The one thread that runs forwards (and, ideally, every other parallel torch op).

    NOTE: on CPU, libgomp keeps one OpenMP thread team per OS thread that runs a parallel
    region. Once two teams share the cores, libgomp throttles their spin-waits and every small
    op pays a sleep/wake-up: we measured decode-sized ops ~10x slower, for good. So a process
    that overlaps on CPU must run all parallel work on this thread: it loads the model here
    (``call``), and the scheduler thread confines itself to one OpenMP thread
    (``confine_calling_thread``) before it runs any parallel op.
    """

    def __init__(self, num_threads: int | None = None) -> None:
        threads = num_threads or torch.get_num_threads()
        self._pool = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="radixlm-forward",
            initializer=torch.set_num_threads,
            initargs=(threads,),
        )

    def call(self, fn, *args, **kwargs):
        """Run ``fn`` on the forward thread and return its result."""
        return self._pool.submit(fn, *args, **kwargs).result()

    def submit(self, fn, *args) -> Future:
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    @staticmethod
    def confine_calling_thread() -> None:
        """Give the calling thread a single OpenMP thread (no team of its own).

        ATen sets a thread's OpenMP count once, from the global count, at its first parallel
        op; so set the global to 1 and trigger that now — the forward thread's initializer then
        raises the global again for itself only.
        """
        torch.set_num_threads(1)
        torch.ones(2).sum()


class BatchExecutor:
    def __init__(
        self, runner: ModelRunner, sampler: Sampler, thread: ForwardThread | None = None
    ) -> None:
        self.runner = runner
        self.sampler = sampler
        self._thread = thread
        self._owns_thread = thread is None

    def run(self, batch: ScheduleBatch) -> BatchResult:
        """Execute ``batch`` on the calling thread."""
        return self._execute(batch)

    def submit(self, batch: ScheduleBatch) -> Future[BatchResult]:
        """Queue ``batch`` on the forward thread (after every batch submitted before it)."""
        if self._thread is None:
            self._thread = ForwardThread()
        return self._thread.submit(self._execute, batch)

    def close(self) -> None:
        if self._thread is not None and self._owns_thread:
            self._thread.close()
            self._thread = None

    # ---- the device work -----------------------------------------------------------------
    @torch.inference_mode()
    def _execute(self, batch: ScheduleBatch) -> BatchResult:
        """Queue the batch's forward, sampling and result copies; reads no device value."""
        t0, c0 = time.perf_counter(), time.thread_time()
        res = BatchResult(self.runner.device)
        fb = batch.forward_batch
        fut = batch.future
        if fut is not None:  # resolve placeholders with the previous batch's sampled ids
            fb.input_ids[fut.dst_positions] = fut.source.sampled_ids[fut.src_rows]
        hidden = self.runner.forward(fb)  # [T, hidden]
        plan = batch.plan
        if plan.sample_rows:
            info = batch.sampling_info
            want_lp = batch.want_logprobs
            top_k = batch.top_logprobs_num
            logits = self.runner.compute_logits(_take_rows(hidden, plan.sample_rows))
            out = self.sampler.sample(logits, info, want_lp, top_k, batch.vocab_mask)
            self.sampler.record_sampled(info, out.next_ids)
            batch.sampled_ids = out.next_ids  # stays on the device: the next batch gathers it
            res.stage("next_ids", out.next_ids)
            if want_lp:
                res.stage("logprobs", out.logprobs)
                if top_k:
                    res.stage("top_logprobs", out.top_logprobs)
                    res.stage("top_ids", out.top_ids)
        if plan.input_spans:
            self._input_logprobs(batch, hidden, res)
        res.seal(time.perf_counter() - t0, time.thread_time() - c0)
        return res

    def _input_logprobs(self, batch: ScheduleBatch, hidden: torch.Tensor, res: BatchResult) -> None:
        spans = batch.plan.input_spans
        rows = [row for s in spans for row in s.rows]
        if not rows:
            return
        targets = [t for s in spans for t in s.targets]
        top_k = max(batch.reqs[s.req_index].top_logprobs_num for s in spans)
        lp, tv, ti = self.runner.token_logprobs(
            _take_rows(hidden, rows), to_device(targets, torch.int64, hidden.device), top_k
        )
        res.stage("input_logprobs", lp)
        if tv is not None:
            res.stage("input_top_logprobs", tv)
            res.stage("input_top_ids", ti)


def _take_rows(hidden: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """``hidden[rows]`` with the index copied without a host sync; no copy when rows are all."""
    if len(rows) == hidden.shape[0] and rows == list(range(len(rows))):
        return hidden
    return hidden.index_select(0, to_device(rows, torch.int64, hidden.device))
