"""``Engine``: the offline, in-process API — load a model, submit prompts, get results.

The engine drives the same :class:`Scheduler` the server uses, in the caller's thread:
``generate`` submits every request of the call, then steps the scheduler until they finish.
An ``Engine`` is not thread-safe; use one per thread (or the HTTP server for concurrency).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from radixlm.config import EngineConfig
from radixlm.entrypoints.request import build_requests
from radixlm.entrypoints.result import ResultBuilder
from radixlm.errors import RequestError
from radixlm.scheduler.io import AbortRequest
from radixlm.server.io_struct import SchedulerReady

logger = logging.getLogger(__name__)


class Engine:
    """``Engine(model_path=None, **options)``; options are the server flags in snake_case.

    ``model_path=None`` loads the bundled stories260K demo model. An unknown option raises
    :class:`~radixlm.errors.ConfigError` listing the valid ones.
    """

    def __init__(self, model_path: str | None = None, **options: Any) -> None:
        from radixlm.engine.model_runner import ModelRunner
        from radixlm.scheduler.scheduler import Scheduler
        from radixlm.tokenizer import load_tokenizer

        self.config = EngineConfig.from_options(model_path=model_path, **options)
        self.runner = ModelRunner(self.config)
        self.tokenizer = (
            None if self.config.skip_tokenizer_init else load_tokenizer(self.config.tokenizer_path)
        )
        self.scheduler = Scheduler(self.config, self.runner, self.tokenizer)
        self._builders: dict[str, ResultBuilder] = {}
        self._closed = False

    # ---- generation ----------------------------------------------------------------------
    def generate(
        self,
        prompt: str | list[str] | None = None,
        sampling_params: dict | list[dict] | None = None,
        input_ids: list[int] | list[list[int]] | None = None,
        return_logprob: bool | list[bool] = False,
        logprob_start_len: int | list[int] | None = None,
        top_logprobs_num: int | list[int] | None = None,
        return_text_in_logprobs: bool = False,
        stream: bool = False,
        rid: str | list[str] | None = None,
        cache_salt: str | list[str] | None = None,
        extra_key: str | list[str] | None = None,
    ) -> dict | list[dict] | Iterator[dict]:
        """Generate for one prompt (→ dict) or a batch / ``n > 1`` (→ list of dicts).

        ``cache_salt`` / ``extra_key`` put a request in a prefix-cache namespace: KV is shared
        only between requests whose salt and extra key are both equal (tenant isolation).

        With ``stream=True`` returns an iterator of result-shaped dicts whose ``text`` is
        cumulative; batch streams add ``"index"``. Closing the iterator early aborts its requests.
        """
        self._check_open()
        requests, metas, is_batch = build_requests(
            text=prompt,
            input_ids=input_ids,
            sampling_params=sampling_params,
            rid=rid,
            return_logprob=return_logprob,
            logprob_start_len=logprob_start_len,
            top_logprobs_num=top_logprobs_num,
            return_text_in_logprobs=return_text_in_logprobs,
            stream=stream,
            tokenizer=self.tokenizer,
            vocab_size=self.runner.vocab_size,
            cache_salt=cache_salt,
            extra_key=extra_key,
            max_n=self.config.max_n,
        )
        for r in requests:
            if r.rid in self._builders:
                raise RequestError(f"request id {r.rid!r} is already in use")
        self.scheduler.add_requests(requests)  # validates all first: nothing queued on error
        for r, m in zip(requests, metas):
            self._builders[r.rid] = ResultBuilder(m, self.tokenizer)
        builders = [self._builders[r.rid] for r in requests]
        if stream:
            return self._stream(builders, is_batch)
        try:
            while not all(b.finished for b in builders):
                self._step()
        finally:
            self._abort_and_drain([b.meta.rid for b in builders if not b.finished])
        for b in builders:
            self._builders.pop(b.meta.rid, None)
        for b in builders:
            b.raise_if_failed()
        results = [b.to_dict() for b in builders]
        return results if is_batch else results[0]

    def _stream(self, builders: list[ResultBuilder], is_batch: bool) -> Iterator[dict]:
        # NOTE: builders are marked dirty by whichever call steps the scheduler, so chunks are
        # not lost when another generate() call runs in between two reads of this stream.
        try:
            while True:
                for b in builders:
                    b.raise_if_failed()
                    if b.dirty:
                        b.dirty = False
                        chunk = b.to_dict()
                        if is_batch:
                            chunk["index"] = b.meta.index
                        yield chunk
                if any(b.dirty for b in builders):
                    continue  # updated by another call while this stream was suspended
                if all(b.finished for b in builders):
                    return
                self._step()
        finally:
            self._abort_and_drain([b.meta.rid for b in builders if not b.finished])
            for b in builders:
                self._builders.pop(b.meta.rid, None)

    def _step(self) -> None:
        """One scheduler step; route outputs to their builders (marking them dirty)."""
        if not self.scheduler.has_work():
            raise RuntimeError("internal error: the scheduler has no work but requests are pending")
        if not self.scheduler.has_runnable_work():
            time.sleep(0.001)  # only grammars are compiling (on the compiler's threads)
        for out in self.scheduler.step():
            b = self._builders.get(out.rid)
            if b is not None:
                b.update(out)

    def _abort_and_drain(self, rids: list[str]) -> None:
        for rid in rids:
            self.scheduler.abort_request(AbortRequest(rid, "abandoned by the caller"))
        while any(rid in self.scheduler.reqs for rid in rids):
            self._step()
        for rid in rids:
            self._builders.pop(rid, None)

    def abort_request(self, rid: str) -> None:
        """Abort a live request (e.g. from inside a stream loop); it finishes with type abort."""
        self.scheduler.abort_request(AbortRequest(rid))

    # ---- maintenance ---------------------------------------------------------------------
    def flush_cache(self) -> bool:
        """Empty the prefix cache. Returns False (and does nothing) while requests are live."""
        self._check_open()
        return self.scheduler.flush_cache()

    def get_server_info(self) -> dict[str, Any]:
        info = {k: getattr(self.config, k) for k in self.config.field_names()}
        info.update(SchedulerReady.from_runner(self.runner).server_info())
        info.update(self.scheduler.get_stats())
        return info

    def shutdown(self) -> None:
        """Free the model and memory pools. The engine cannot be used afterwards."""
        if self._closed:
            return
        self._closed = True
        self.scheduler.close()
        self.scheduler = None  # type: ignore[assignment]
        self.runner = None  # type: ignore[assignment]

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Engine has been shut down")

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
