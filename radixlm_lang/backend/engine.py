"""``EngineBackend``: run DSL programs on an in-process ``radixlm.Engine`` (no HTTP).

``radixlm.Engine`` is not thread-safe, but ``run_batch`` calls the backend from many threads.
So one background thread (``EngineService``) owns the engine's scheduler: callers hand it native
``/generate`` bodies and wait on a future (or read a stream's queue); the service thread
validates each body with ``build_requests`` (as ``Engine.generate`` does), queues the requests,
and steps the scheduler while any are live. Requests of concurrent callers are therefore
batched into the same scheduler steps and share the prefix cache.

``radixlm`` (and torch) are imported only when a backend is built, so ``radixlm_lang`` imports
without them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from radixlm_lang.backend.native import NativeBackend
from radixlm_lang.tools import ChatToolRenderer

logger = logging.getLogger(__name__)

# /generate fields the engine understands; the multimodal ones are accepted only when null.
BODY_FIELDS = {
    "text", "input_ids", "sampling_params", "rid", "return_logprob", "logprob_start_len",
    "top_logprobs_num", "return_text_in_logprobs", "stream", "cache_salt", "extra_key",
}  # fmt: skip
NULL_ONLY_FIELDS = {"image_data", "video_data", "audio_data", "input_embeds", "lora_path"}

_END = object()  # end of a stream's chunk queue


class EngineServiceClosed(RuntimeError):
    """The service was shut down, or its engine failed; no more requests are accepted."""


@dataclass
class _Job:
    """One caller's ``/generate`` body and where its result goes."""

    body: dict[str, Any]
    stream: bool
    future: Future = field(default_factory=Future)  # non-stream: the result (dict or list)
    chunks: queue.Queue = field(default_factory=queue.Queue)  # stream: dicts, then _END / error
    builders: list[Any] = field(default_factory=list)  # ResultBuilder per request
    is_batch: bool = False
    abandoned: bool = False  # the caller stopped listening; finish quietly
    done: bool = False


class EngineService:
    """Owns ``engine``'s scheduler on one thread; ``generate`` / ``stream`` / ``call`` from any.

    Invariant: only the service thread touches ``engine.scheduler`` (and ``self._builders``),
    from ``start`` until ``close``. Do not call ``engine.generate`` while the service runs.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._inbox: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._jobs: list[_Job] = []
        self._builders: dict[str, Any] = {}  # rid → ResultBuilder, for live requests
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="radixlm-engine", daemon=True)
        self._thread.start()

    # ---- callers' side (any thread) ------------------------------------------------------
    def generate(self, body: dict[str, Any]) -> dict[str, Any] | list[dict[str, Any]]:
        """Run a non-streamed ``/generate`` body; raises the engine's ``RequestError``."""
        job = _Job(body=body, stream=False)
        self._submit(("job", job))
        return job.future.result()

    def stream(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Result dicts with cumulative ``text``; closing the iterator early aborts the call."""
        job = _Job(body=body, stream=True)
        self._submit(("job", job))
        try:
            while True:
                item = job.chunks.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not job.done:
                self._inbox.put(("abort", job))

    def call(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(engine)`` on the service thread between two steps; return its result.

        ``fn`` may step the scheduler (e.g. ``engine.generate``) only while no other call is
        live: ``Engine`` would drop the outputs of requests it did not submit."""
        fut: Future = Future()
        self._submit(("call", (fn, fut)))
        return fut.result()

    def close(self) -> None:
        """Fail the live calls, stop the thread. Idempotent; the engine is left as is."""
        if not self._closed:
            self._closed = True
            self._inbox.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _submit(self, item: tuple[str, Any]) -> None:
        if self._closed or self._error is not None:
            raise EngineServiceClosed(f"the engine service is not running ({self._error})")
        self._inbox.put(item)

    # ---- the service thread --------------------------------------------------------------
    def _loop(self) -> None:
        scheduler = self.engine.scheduler
        while True:
            busy = bool(self._jobs) or scheduler.has_work()
            items = [] if busy else [self._inbox.get()]
            while True:
                try:
                    items.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            for item in items:
                if item is None:
                    self._stop()
                    return
                self._handle(*item)
            try:
                if scheduler.has_work():
                    if not scheduler.has_runnable_work():
                        time.sleep(0.001)  # only grammars are compiling
                    for out in scheduler.step():
                        b = self._builders.get(out.rid)
                        if b is not None:
                            b.update(out)
                elif any(not j.done for j in self._jobs):
                    if any(not all(b.finished for b in j.builders) for j in self._jobs):
                        raise RuntimeError("internal error: requests pending with no work")
            except Exception as e:  # the engine is in an unknown state: stop serving
                logger.exception("the engine failed; failing every live call")
                self._error = e
                self._fail_all(e)
                return
            self._deliver()

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "job":
            self._start(payload)
        elif kind == "abort":
            self._abort(payload, "abandoned by the caller")
        elif kind == "call":
            fn, fut = payload
            try:
                fut.set_result(fn(self.engine))
            except Exception as e:
                fut.set_exception(e)

    def _start(self, job: _Job) -> None:
        from radixlm.entrypoints.request import build_requests
        from radixlm.entrypoints.result import ResultBuilder
        from radixlm.errors import RequestError

        body = job.body
        try:
            unknown = set(body) - BODY_FIELDS - NULL_ONLY_FIELDS
            if unknown:
                raise RequestError(f"unknown /generate fields {sorted(unknown)}")
            for name in NULL_ONLY_FIELDS:
                if body.get(name) is not None:
                    raise RequestError(f"{name} is not supported by the in-process engine")
            requests, metas, job.is_batch = build_requests(
                text=body.get("text"),
                input_ids=body.get("input_ids"),
                sampling_params=body.get("sampling_params"),
                rid=body.get("rid"),
                return_logprob=body.get("return_logprob", False),
                logprob_start_len=body.get("logprob_start_len"),
                top_logprobs_num=body.get("top_logprobs_num"),
                return_text_in_logprobs=bool(body.get("return_text_in_logprobs")),
                stream=job.stream,
                tokenizer=self.engine.tokenizer,
                vocab_size=self.engine.runner.vocab_size,
                cache_salt=body.get("cache_salt"),
                extra_key=body.get("extra_key"),
            )
            if any(r.rid in self._builders for r in requests):
                raise RequestError("a request id of this call is already in use")
            self.engine.scheduler.add_requests(requests)  # all or nothing
        except Exception as e:
            self._finish(job, e)
            return
        job.builders = [ResultBuilder(m, self.engine.tokenizer) for m in metas]
        for b in job.builders:
            self._builders[b.meta.rid] = b
        self._jobs.append(job)

    def _abort(self, job: _Job, message: str) -> None:
        from radixlm.scheduler.io import AbortRequest

        job.abandoned = True
        for b in job.builders:
            if not b.finished:
                self.engine.scheduler.abort_request(AbortRequest(b.meta.rid, message))

    def _deliver(self) -> None:
        """Hand new chunks to streams; complete the calls whose requests all finished."""
        still: list[_Job] = []
        for job in self._jobs:
            failed = next((b for b in job.builders if b.error_status is not None), None)
            if job.stream and not job.abandoned and failed is None:
                for b in job.builders:
                    if b.dirty:
                        b.dirty = False
                        chunk = b.to_dict()
                        if job.is_batch:
                            chunk["index"] = b.meta.index
                        job.chunks.put(chunk)
            if failed is not None and not job.abandoned:
                self._abort(job, "another request of the call failed")
                try:
                    failed.raise_if_failed()
                except Exception as e:
                    self._finish(job, e)
            if all(b.finished for b in job.builders):
                for b in job.builders:
                    self._builders.pop(b.meta.rid, None)
                if not job.done:
                    results = [b.to_dict() for b in job.builders]
                    self._finish(job, results if job.is_batch else results[0])
            else:
                still.append(job)
        self._jobs = still

    def _finish(self, job: _Job, result: Any) -> None:
        """Complete a call once with a result or an exception."""
        if job.done:
            return
        job.done = True
        error = result if isinstance(result, BaseException) else None
        if job.stream:
            job.chunks.put(error if error is not None else _END)
        elif error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    def _stop(self) -> None:
        """Fail the live calls, abort their requests and let the scheduler finish them, so an
        engine that outlives the service is left idle."""
        from radixlm.scheduler.io import AbortRequest

        self._fail_all(EngineServiceClosed("the engine service was shut down"))
        scheduler = self.engine.scheduler
        try:
            for rid in list(scheduler.reqs):
                scheduler.abort_request(AbortRequest(rid, "the engine service was shut down"))
            while scheduler.reqs and scheduler.has_work():
                scheduler.step()
        except Exception:
            logger.exception("could not drain the engine while shutting the service down")

    def _fail_all(self, error: BaseException) -> None:
        for job in self._jobs:
            self._finish(job, error)
        self._jobs = []
        self._builders.clear()
        while True:  # calls that arrived too late
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item is not None and item[0] == "job":
                self._finish(item[1], error)
            elif item is not None and item[0] == "call":
                item[1][1].set_exception(error)


class EngineBackend(NativeBackend):
    """``EngineBackend(engine=None, chat_template_name=None, tool_chat_template=None,
    tool_call_parser=None, **engine_options)``.

    Without ``engine`` one is built with ``radixlm.Engine(**engine_options)`` (the bundled
    stories260K model by default) and shut down with the backend. While the backend runs it
    owns the engine: do not call the engine directly (use ``run_on_engine``).

    Gens with tools are rendered by ``tool_chat_template`` (as the server's ``--chat-template``:
    a registered name or a Jinja file; default the tokenizer's own) and parsed in the format
    ``tool_call_parser`` (as ``--tool-call-parser``; default the one the template implies).
    """

    def __init__(
        self,
        engine: Any = None,
        chat_template_name: str | None = None,
        tool_chat_template: str | None = None,
        tool_call_parser: str | None = None,
        **engine_options: Any,
    ) -> None:
        self._owns_engine = engine is None
        if engine is None:
            import radixlm

            engine = radixlm.Engine(**engine_options)
        elif engine_options:
            raise TypeError("pass either an engine or engine options, not both")
        self.engine = engine
        self.model_path = str(engine.config.model_path)
        self.chat_template_name = chat_template_name
        self.tool_chat_template = tool_chat_template
        self.tool_call_parser = tool_call_parser
        self._tool_renderer: ChatToolRenderer | None = None
        self.service = EngineService(engine)

    def tool_renderer(self) -> ChatToolRenderer:
        if self._tool_renderer is None:
            self._tool_renderer = ChatToolRenderer.resolve(
                self.engine.tokenizer, self.tool_chat_template, self.tool_call_parser
            )
        return self._tool_renderer

    def _call(self, body: dict[str, Any]) -> dict[str, Any] | list[dict[str, Any]]:
        return self.service.generate(body)

    def _stream(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        return self.service.stream(body)

    def run_on_engine(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(engine)`` on the thread that owns the engine (between scheduler steps)."""
        return self.service.call(fn)

    def flush_cache(self) -> bool:
        """Empty the prefix cache; False (nothing done) while requests are live."""
        return self.service.call(lambda e: e.scheduler.flush_cache())

    def get_server_info(self) -> dict[str, Any]:
        return self.service.call(lambda e: e.get_server_info())

    def shutdown(self) -> None:
        """Stop the service thread; shut the engine down if this backend created it."""
        self.service.close()
        if self._owns_engine and not getattr(self.engine, "_closed", False):
            self.engine.shutdown()
