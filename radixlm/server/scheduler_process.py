"""The scheduler process: owns the model, the KV pools and the prefix cache; runs the loop.

Loop: drain incoming messages (non-blocking while there is work; a short blocking poll when
idle) → ``Scheduler.step()`` (overlapped by default) → push outputs to the detokenizer →
about once a second a ``Heartbeat`` (liveness and gauges) to the main process → every
``decode_log_interval`` steps one INFO line. Start-up ends with ``SchedulerReady`` (the
handshake the main process waits for before opening its port) or ``SchedulerFailed``.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from typing import Any

from radixlm.config import EngineConfig
from radixlm.errors import RadixLMError
from radixlm.server import codec
from radixlm.server.io_struct import (
    AbortRequest,
    AbortRequests,
    BatchOutputs,
    ControlReply,
    FlushCacheReq,
    GenerateReqs,
    GetStatsReq,
    Heartbeat,
    RequestRejected,
    SchedulerFailed,
    SchedulerReady,
)
from radixlm.server.ipc import (
    IpcNames,
    configure_child_logging,
    exit_when_parent_dies,
    ignore_stop_signals,
    pull_socket,
    push_socket,
)

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
IDLE_POLL_MS = 200
GRAMMAR_POLL_MS = 2


def run_scheduler_process(
    config: EngineConfig, ipc: IpcNames, parent_pid: int, decode_log_interval: int
) -> None:
    """Entry point of the child process (spawned)."""
    configure_child_logging(config.log_level, "scheduler")
    exit_when_parent_dies(parent_pid)
    ignore_stop_signals(parent_pid)
    import zmq

    ctx = zmq.Context()
    recv = pull_socket(ctx, ipc.scheduler_input)
    to_detok = push_socket(ctx, ipc.detokenizer_input)
    to_main = push_socket(ctx, ipc.main_input)
    try:
        loop = SchedulerLoop(config, recv, to_detok, to_main, decode_log_interval)
    except Exception as e:  # report why start-up failed, then exit non-zero
        msg = str(e) if isinstance(e, RadixLMError) else f"{type(e).__name__}: {e}"
        logger.error("scheduler failed to start: %s", msg)
        to_main.send(codec.encode(SchedulerFailed(msg)))
        time.sleep(0.5)  # let the message leave before the process exits
        os._exit(1)
    try:
        loop.run()
    except Exception:
        logger.error("scheduler crashed:\n%s", traceback.format_exc())
        os._exit(1)


class SchedulerLoop:
    def __init__(
        self, config: EngineConfig, recv: Any, to_detok: Any, to_main: Any, log_interval: int
    ) -> None:
        from radixlm.engine.model_runner import ModelRunner
        from radixlm.scheduler.executor import ForwardThread
        from radixlm.scheduler.scheduler import Scheduler
        from radixlm.tokenizer import load_tokenizer

        self.recv, self.to_detok, self.to_main = recv, to_detok, to_main
        self.log_interval = log_interval
        thread = None
        if config.overlap_schedule:
            # All parallel torch work (model load included) runs on the forward thread; this
            # thread only schedules (see ForwardThread).
            thread = ForwardThread(config.num_threads)
            ForwardThread.confine_calling_thread()
            runner = thread.call(ModelRunner, config)
        else:
            runner = ModelRunner(config)
        tokenizer = None if config.skip_tokenizer_init else load_tokenizer(config.tokenizer_path)
        self.scheduler = Scheduler(config, runner, tokenizer, forward_thread=thread)
        ready = SchedulerReady.from_runner(runner)
        self.max_total_tokens = ready.max_total_tokens
        self.to_main.send(codec.encode(ready))
        self._last_beat = 0.0
        self._beat_stats: dict[str, Any] = {}
        self._steps = 0
        self._cpu0 = time.thread_time()

    def run(self) -> None:
        import zmq

        sched = self.scheduler
        while True:
            if not sched.has_runnable_work():
                # Idle: wait for a message. Grammars compiling: wait briefly, then poll them.
                self.recv.poll(GRAMMAR_POLL_MS if sched.has_work() else IDLE_POLL_MS)
            while True:
                try:
                    data = self.recv.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._handle(codec.decode(data))
            if sched.has_work():
                outputs = sched.step()
                self._steps += 1
                if outputs:
                    self.to_detok.send(codec.encode(BatchOutputs(outputs)))
                if self._steps % self.log_interval == 0:
                    self._log_batch()
            self._heartbeat()

    # ---- messages ------------------------------------------------------------------------
    def _handle(self, msg: Any) -> None:
        sched = self.scheduler
        if isinstance(msg, GenerateReqs):
            try:
                sched.add_requests(msg.requests)
            except RadixLMError as e:
                rids = [r.rid for r in msg.requests]
                self.to_main.send(codec.encode(RequestRejected(rids, str(e), e.http_status)))
        elif isinstance(msg, (AbortRequest, AbortRequests)):
            sched.abort_request(msg)
        elif isinstance(msg, FlushCacheReq):
            ok = sched.flush_cache()
            self.to_main.send(codec.encode(ControlReply("flush_cache", ok)))
        elif isinstance(msg, GetStatsReq):
            stats = self._stats()
            if msg.top_prefixes > 0:
                stats["radix_tree"] = sched.tree_summary(msg.top_prefixes)
            self.to_main.send(codec.encode(ControlReply("stats", True, stats)))
        else:
            logger.warning("ignoring unexpected message %s", type(msg).__name__)

    # ---- observability -------------------------------------------------------------------
    def _stats(self) -> dict[str, Any]:
        sched = self.scheduler
        stats = sched.get_stats()
        pc = stats["prefix_cache"]
        used = self.max_total_tokens - stats["free_kv_tokens"] - pc["evictable_tokens"]
        stats["num_used_tokens"] = used
        stats["token_usage"] = used / self.max_total_tokens
        loop_cpu = time.thread_time() - self._cpu0
        stats["cpu_seconds_outside_forward"] = loop_cpu - sched.stats.inline_forward_cpu_seconds
        return stats

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_beat < HEARTBEAT_SECONDS:
            return
        stats = self._stats()
        prev, dt = self._beat_stats, now - self._last_beat
        if prev:
            gen = stats["generated_tokens"] - prev["generated_tokens"]
            stats["gen_throughput"] = gen / dt
            queried = (
                stats["prefix_cache"]["queried_tokens"] - prev["prefix_cache"]["queried_tokens"]
            )
            hit = stats["prefix_cache"]["hit_tokens"] - prev["prefix_cache"]["hit_tokens"]
            stats["cache_hit_rate"] = hit / queried if queried else prev.get("cache_hit_rate", 0.0)
        self._beat_stats, self._last_beat = stats, now
        self.to_main.send(codec.encode(Heartbeat(stats)))

    def _log_batch(self) -> None:
        s = self._beat_stats or self._stats()
        logger.info(
            "batch: #running-req %d, #queue-req %d, token usage %.2f, gen throughput %.1f tok/s, "
            "cache hit rate %.1f%%",
            self.scheduler.get_stats()["num_running_reqs"],
            len(self.scheduler.waiting),
            s.get("token_usage", 0.0),
            s.get("gen_throughput", 0.0),
            100 * s.get("cache_hit_rate", 0.0),
        )
