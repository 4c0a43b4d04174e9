"""``TokenizerManager``: the main process's asyncio front end to the scheduler.

It validates and tokenizes each call (``entrypoints/request.py``, shared with the offline
engine), assigns request ids, sends the requests to the scheduler, and wakes the waiting HTTP
handler whenever the detokenizer delivers output. It also watches the children: a dead
scheduler or detokenizer, or a scheduler silent for ``watchdog_timeout`` seconds, fails every
waiting request with a 503, marks the server unhealthy and asks the launcher to exit.

Invariant: every request registered here ends exactly once — finished by the scheduler,
aborted (client gone or ``/abort_request``), or failed (including by the shutdown drain's
deadline) — and its state is removed then.

Request ids: the scheduler sees an id made unique here (``<client rid>#<n>``), and the client
sees its own. So a client may reuse an id, and an id in use cannot be probed by another client
(a "duplicate id" error would say that it is live). ``/abort_request`` (an admin route) aborts
every live request with the given client id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from radixlm.config import EngineConfig
from radixlm.entrypoints.result import ResultBuilder, status_error
from radixlm.errors import RadixLMError
from radixlm.server import codec
from radixlm.server.dashboard import DashboardHistory
from radixlm.server.io_struct import (
    AbortRequests,
    BatchTextOutputs,
    ControlReply,
    FlushCacheReq,
    GenerateReqs,
    GetStatsReq,
    Heartbeat,
    RequestRejected,
    SchedulerReady,
)
from radixlm.server.ipc import IpcNames, process_cpu_seconds, pull_socket, push_socket
from radixlm.server.native_request import (
    OFF_LOOP_CHARS,
    NativeLimits,
    parse_generate,
    prompt_chars,
)
from radixlm.server.options import ServerConfig
from radixlm.server.server_errors import SchedulerUnavailable, ServerDraining, check_model

logger = logging.getLogger(__name__)


@dataclass
class ReqState:
    builder: ResultBuilder
    wake: asyncio.Event  # shared by all requests of one call
    client_rids: tuple[str, ...]  # the ids /abort_request finds it by (its own, its call's)
    tenant: str | None = None  # the API key's tenant (--api-key-file)
    error: RadixLMError | None = None
    last_token_time: float = 0.0


@dataclass
class ChildProcess:
    name: str
    process: Any  # multiprocessing.Process


@dataclass
class Health:
    healthy: bool = True
    reason: str = ""
    last_heartbeat: float = field(default_factory=time.monotonic)
    stats: dict[str, Any] = field(default_factory=dict)


class TokenizerManager:
    def __init__(
        self,
        engine_config: EngineConfig,
        server_config: ServerConfig,
        tokenizer: Any | None,
        ready: SchedulerReady,
        ipc: IpcNames,
        children: list[ChildProcess],
        metrics: Any | None = None,
        chat_template: Any = None,
        tool_format: Any = None,
        reasoning: Any = None,
    ) -> None:
        self.engine_config = engine_config
        self.server_config = server_config
        self.tokenizer = tokenizer
        self.ready = ready
        self.ipc = ipc
        self.children = children
        self.metrics = metrics
        self.chat_template = chat_template
        self.tool_format = tool_format  # radixlm.function_call.formats.ToolCallFormat | None
        # radixlm.server.tool_setup.ReasoningSetup | None (--reasoning-parser)
        self.reasoning = reasoning
        self.context_length = ready.context_length
        self.vocab_size = ready.vocab_size
        self.model_names = server_config.model_names(engine_config.model_path)
        self.served_model_name = self.model_names[0]
        # What the OpenAI routes accept as "model" (anything else is a 404).
        self.accepted_models = frozenset([*self.model_names, engine_config.model_path, "default"])
        self._limits = NativeLimits.for_server(
            tokenizer,
            self.vocab_size,
            self.context_length,
            engine_config.max_n,
            reasoning,
            (self.accepted_models, self.model_names),  # /generate's "model" (sglang-router)
        )
        self.states: dict[str, ReqState] = {}  # by the scheduler-side (unique) request id
        self._seq = 0  # makes scheduler-side request ids unique
        self.draining = False
        self.dashboard = DashboardHistory()  # /dashboard's time series
        self.health = Health()
        self._control: dict[str, deque[asyncio.Future]] = {"flush_cache": deque(), "stats": deque()}
        self._tasks: list[asyncio.Task] = []
        self.on_fatal: Callable[[str], None] = lambda reason: None

    async def start(self) -> None:
        """Bind the sockets on the running loop and start the receive and watchdog tasks."""
        import zmq.asyncio

        self._ctx = zmq.asyncio.Context()
        self._recv = pull_socket(self._ctx, self.ipc.main_input)
        self._send = push_socket(self._ctx, self.ipc.scheduler_input)
        self.health.last_heartbeat = time.monotonic()
        self._tasks = [
            asyncio.create_task(self._receive_loop(), name="radixlm-receive"),
            asyncio.create_task(self._watchdog_loop(), name="radixlm-watchdog"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        self._ctx.destroy(linger=0)

    # ---- generation ----------------------------------------------------------------------
    async def generate(
        self, obj: Any, tenant: str | None = None
    ) -> AsyncIterator[dict | list[dict]]:
        """Native /generate. Non-stream: yields one result (a list for batches). Stream:
        yields cumulative chunks (with ``index`` for batches). Raises RadixLMError on bad
        input before yielding. Closing the iterator early aborts unfinished requests (all of
        the call's in one scheduler message). ``tenant`` (from the API key) puts the requests
        in that tenant's prefix-cache namespace."""
        if prompt_chars(obj, self._limits) > OFF_LOOP_CHARS:
            requests, metas, is_batch = await asyncio.to_thread(self._validate, obj)  # long text
        else:
            requests, metas, is_batch = self._validate(obj)
        stream = bool(obj.get("stream"))
        wake = asyncio.Event()
        states = []
        for r, m in zip(requests, metas):
            self._seq += 1
            call_rid = m.rid.rsplit("_", 1)[0] if m.sampling.n > 1 else m.rid
            r.rid = f"{m.rid}#{self._seq}"
            r.tenant = tenant
            st = ReqState(
                ResultBuilder(m, self.tokenizer, detokenize=False), wake, (m.rid, call_rid), tenant
            )
            self.states[r.rid] = st
            states.append(st)
        try:
            await self._send.send(codec.encode(GenerateReqs(requests)))
            if stream:
                async for chunk in self._stream(states, is_batch):
                    yield chunk
            else:
                while not all(s.builder.finished or s.error for s in states):
                    await wake.wait()
                    wake.clear()
                    self._raise_error(states)
                results = [s.builder.to_dict() for s in states]
                yield results if is_batch else results[0]
        finally:
            unfinished = []
            for r, st in zip(requests, states):
                self.states.pop(r.rid, None)
                if st.builder.finished:
                    continue
                if self.metrics is not None:  # its finish will not reach a state any more
                    b = st.builder
                    self.metrics.on_request_finished(
                        prompt_tokens=b.prompt_tokens,
                        completion_tokens=len(b.output_ids),
                        cached_tokens=b.cached_tokens,
                        e2e_s=time.time() - b.created,
                        queue_s=b.queue_time,
                        aborted=True,
                        tenant=st.tenant,
                    )
                if st.error is None or isinstance(st.error, ServerDraining):
                    unfinished.append(r.rid)
            if unfinished and self.health.healthy:
                await self._send.send(codec.encode(AbortRequests(unfinished, "client went away")))

    async def _stream(self, states: list[ReqState], is_batch: bool) -> AsyncIterator[dict]:
        wake = states[0].wake
        while True:
            self._raise_error(states)
            for st in states:
                if st.builder.dirty:
                    st.builder.dirty = False
                    chunk = st.builder.to_dict()
                    if is_batch:
                        chunk["index"] = st.builder.meta.index
                    yield chunk
            # NOTE: updates arrive while a chunk is being sent (the yield): a finished request
            # may hold one more, its last, which must still go out.
            if all(st.builder.finished and not st.builder.dirty for st in states):
                return
            if not any(st.builder.dirty for st in states):
                await wake.wait()
                wake.clear()

    @staticmethod
    def _raise_error(states: list[ReqState]) -> None:
        for st in states:
            if st.error is not None:
                raise st.error

    def _validate(self, obj: Any):
        self._check_admitting()
        strict = self.engine_config.json_schema_unenforced == "reject"
        return parse_generate(
            obj, self._limits, check_schema=self.check_strict_schema if strict else None
        )

    def _check_admitting(self) -> None:
        if not self.health.healthy:
            raise SchedulerUnavailable(f"the server is shutting down: {self.health.reason}")
        if self.draining:
            raise SchedulerUnavailable(
                "the server is shutting down and accepts no new requests; retry on another "
                "replica or after it restarts"
            )

    def check_model(self, model: Any) -> None:
        """An OpenAI ``model`` this server does not serve is a 404 naming the served ones."""
        check_model(model, self.accepted_models, self.model_names)

    def check_strict_schema(self, schema: str) -> None:
        """A 400 now, naming each keyword and its JSON pointer, for a JSON schema this server's
        grammar backend cannot enforce exactly (OpenAI ``strict: true``, or
        ``--json-schema-unenforced reject``)."""
        from radixlm.constrained.backends import check_enforceable

        check_enforceable(schema, self.engine_config.grammar_backend)

    async def abort(self, rid: str) -> bool:
        """Abort every live request with client id ``rid`` (for ``n > 1``, the call's id
        aborts all its samples); they finish with type "abort". False if there is none."""
        found = [k for k, st in self.states.items() if rid in st.client_rids]
        if found:
            await self._send.send(codec.encode(AbortRequests(found, "aborted by /abort_request")))
        return bool(found)

    # ---- shutdown ------------------------------------------------------------------------
    def begin_drain(self, timeout: float) -> None:
        """Stop admitting requests; after ``timeout`` seconds end the unfinished ones with a
        503 (:class:`ServerDraining`; streams get it as their last event)."""
        if self.draining:
            return
        self.draining = True
        logger.info(
            "shutting down: %d request(s) in flight get %.0f s to finish",
            len(self.states), timeout,
        )  # fmt: skip
        asyncio.get_running_loop().call_later(timeout, self._end_drain, timeout)

    def _end_drain(self, timeout: float) -> None:
        left = [st for st in self.states.values() if not st.builder.finished and st.error is None]
        if left:
            logger.warning("shutting down: ending %d unfinished request(s)", len(left))
        for st in left:
            st.error = ServerDraining(
                f"the server shut down before this request finished (it had {timeout:.0f} s, "
                "--graceful-shutdown-timeout); retry it"
            )
            st.wake.set()

    # ---- control -------------------------------------------------------------------------
    async def _control_call(self, kind: str, msg: Any, timeout: float = 30.0) -> ControlReply:
        if not self.health.healthy:
            raise SchedulerUnavailable(f"the server is shutting down: {self.health.reason}")
        fut = asyncio.get_running_loop().create_future()
        self._control[kind].append(fut)
        await self._send.send(codec.encode(msg))
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError as e:
            raise SchedulerUnavailable(f"the scheduler did not answer {kind} in {timeout} s") from e

    async def flush_cache(self) -> bool:
        return (await self._control_call("flush_cache", FlushCacheReq())).ok

    async def scheduler_stats(self) -> dict[str, Any]:
        return (await self._control_call("stats", GetStatsReq())).payload

    async def scheduler_stats_with_tree(self, top_prefixes: int) -> dict[str, Any]:
        """The scheduler's stats plus its radix tree summary (``radix_tree``)."""
        return (await self._control_call("stats", GetStatsReq(top_prefixes))).payload

    def cpu_seconds(self) -> float:
        """CPU time of the main process plus the detokenizer (all outside the forward)."""
        total = time.process_time()
        for child in self.children:
            if child.name == "detokenizer":
                total += process_cpu_seconds(child.process.pid)
        return total

    # ---- receive + watchdog --------------------------------------------------------------
    async def _receive_loop(self) -> None:
        while True:
            msg = codec.decode(await self._recv.recv())
            if isinstance(msg, BatchTextOutputs):
                for out, delta in zip(msg.outputs, msg.text_deltas):
                    st = self.states.get(out.rid)
                    if st is not None:
                        st.builder.update(out, delta)
                        st.error = st.error or st.builder.failure()
                        self._observe(st, out)
                        st.wake.set()
            elif isinstance(msg, Heartbeat):
                self.health.last_heartbeat = time.monotonic()
                self.health.stats = msg.stats
                self.dashboard.on_heartbeat(msg.stats)
                if self.metrics is not None:
                    self._observe_stats(msg.stats)
            elif isinstance(msg, RequestRejected):
                for rid in msg.rids:
                    st = self.states.get(rid)
                    if st is not None:
                        st.error = status_error(msg.message, msg.status)
                        st.wake.set()
            elif isinstance(msg, ControlReply):
                queue = self._control.get(msg.kind)
                while queue:
                    fut = queue.popleft()
                    if not fut.done():
                        fut.set_result(msg)
                        break

    async def _watchdog_loop(self) -> None:
        timeout = self.server_config.watchdog_timeout
        while True:
            await asyncio.sleep(0.5)
            dead = [c.name for c in self.children if not c.process.is_alive()]
            if dead:
                self.fail(f"the {' and '.join(dead)} process died")
                return
            if time.monotonic() - self.health.last_heartbeat > timeout:
                self.fail(f"the scheduler sent no heartbeat for {timeout:.0f} s (hung)")
                return

    def fail(self, reason: str) -> None:
        """Mark the server unhealthy, fail every waiting request, and ask to exit."""
        if not self.health.healthy:
            return
        logger.error("fatal: %s; failing %d request(s) and exiting", reason, len(self.states))
        self.health.healthy = False
        self.health.reason = reason
        for st in self.states.values():
            if not st.builder.finished:
                st.error = SchedulerUnavailable(f"request failed: {reason}")
                st.wake.set()
        for queue in self._control.values():
            for fut in queue:
                if not fut.done():
                    fut.set_exception(SchedulerUnavailable(reason))
        self.on_fatal(reason)

    # ---- metrics -------------------------------------------------------------------------
    def _observe(self, st: ReqState, out: Any) -> None:
        """Feed one output to the dashboard's history and, with --enable-metrics, the metrics."""
        now = time.time()
        b, m = st.builder, self.metrics
        if out.new_token_ids:
            if st.last_token_time == 0.0:
                self.dashboard.on_first_token(now - b.created)
                if m is not None:
                    m.on_first_token(now - b.created)
            elif m is not None:
                m.on_tokens(now - st.last_token_time, len(out.new_token_ids))
            st.last_token_time = now
        if m is None:
            return
        if out.finished_reason is not None:
            m.on_request_finished(
                prompt_tokens=out.prompt_tokens,
                completion_tokens=out.completion_tokens,
                cached_tokens=out.cached_tokens,
                e2e_s=now - b.created,
                queue_s=b.queue_time,
                aborted=out.finished_reason.get("type") == "abort",
                tenant=st.tenant,
            )
            if out.constraint is not None:
                m.on_constrained_output(out.constraint)

    def _observe_stats(self, s: dict[str, Any]) -> None:
        pc = s["prefix_cache"]
        self.metrics.on_scheduler_stats(
            num_running_reqs=s["num_running_reqs"],
            num_queue_reqs=s["num_waiting_reqs"],
            num_used_tokens=s["num_used_tokens"],
            token_usage=s["token_usage"],
            gen_throughput=s.get("gen_throughput", 0.0),
            cache_hit_rate=s.get("cache_hit_rate", 0.0),
            prefix_cache_queried_tokens=pc["queried_tokens"],
            prefix_cache_hit_tokens=pc["hit_tokens"],
        )
