"""The interpreter: ``StreamExecutor`` runs one program's expressions against a backend.

Invariants:
* One executor per program (and per fork branch). ``submit`` only enqueues; one worker thread
  drains the queue in order, so the user's Python control flow runs ahead until it reads a
  variable. The ``threading.Event`` of every variable an expression defines is created at submit
  time, so a reader blocks until that very expression has run.
* All mutable state (text, messages, variables, trace) changes under ``cond``; every change
  notifies it, which is what streaming readers wait on.
* The first exception of a backend call (or of a malformed program) is stored in ``error_``;
  every variable event is then set, and the rest of the queue is drained without running, so no
  reader or ``sync`` can hang. Reading a variable that was never produced raises ``ProgramError``.
* Every backend call is recorded in ``trace`` (kind, prompt, params, output, cached tokens,
  latency, error): the per-program debug trace.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from radixlm_lang.backend.base import Backend, Prompt
from radixlm_lang.chat_template import ChatTemplate
from radixlm_lang.choices import token_length_normalized
from radixlm_lang.global_config import global_config
from radixlm_lang.ir import (
    CommitLazy,
    ConstantText,
    Expr,
    ExprList,
    Gen,
    Image,
    RoleBegin,
    RoleEnd,
    SamplingParams,
    Select,
    ToolMessage,
    VarScopeBegin,
    VarScopeEnd,
    defined_names,
)
from radixlm_lang.tools import ToolOutput, ToolPositionError

logger = logging.getLogger(__name__)


class ProgramError(RuntimeError):
    """A variable was read whose producing expression failed (``__cause__`` is the failure)."""


class StreamExecutor:
    def __init__(
        self,
        backend: Backend,
        default_sampling_params: SamplingParams,
        chat_template: ChatTemplate,
        stream: bool = False,
        use_thread: bool = True,
    ) -> None:
        self.sid = uuid.uuid4().hex
        self.backend = backend
        self.default_sampling_params = default_sampling_params
        self.chat_template = chat_template
        self.stream = stream
        self.use_thread = use_thread

        self.text_ = ""
        self.messages_: list[dict[str, Any]] = []
        self.images_: list[str] = []
        self.cur_images: list[str] = []  # data URLs of the open role's images
        self.variables: dict[str, Any] = {}
        self.variable_event: dict[str, threading.Event] = {}
        self.meta_info: dict[str, Any] = {}
        self.partial: dict[str, str] = {}  # text streamed so far into a not-yet-finished variable
        self.submitted_names: list[str] = []  # names defined by this executor (fork-join gathers)
        self.cur_role: str | None = None
        self.cur_role_begin_pos = 0
        # the open assistant turn's tool gen: (end of its raw output in text_, content, calls)
        self.cur_tool_turn: tuple[int, str, list[dict[str, Any]]] | None = None
        self.var_scope_begin: dict[str, int] = {}
        self.fork_start_text_pos = 0
        self.trace: list[dict[str, Any]] = []
        self.children: list[StreamExecutor] = []
        self.error_: Exception | None = None
        self.finished = False  # the worker has drained the end sentinel
        self._ended = False

        self.cond = threading.Condition()
        self.queue: queue.Queue[Expr | None] = queue.Queue()
        if use_thread:
            threading.Thread(target=self._worker, daemon=True, name=f"sgl-{self.sid[:8]}").start()

    # ---- user-thread side -------------------------------------------------------------------
    def submit(self, expr: Expr) -> None:
        with self.cond:
            if self._ended:
                raise RuntimeError("this program state has ended (joined or finished)")
            for name in defined_names(expr):
                self.variable_event[name] = threading.Event()
                self.submitted_names.append(name)
            self.cond.notify_all()
        if self.use_thread:
            self.queue.put(expr)
        else:
            self._run_one(expr)

    def end(self) -> None:
        """Let the worker exit after the queued expressions (idempotent)."""
        with self.cond:
            if self._ended:
                return
            self._ended = True
        if self.use_thread:
            self.queue.put(None)
        else:
            self._finish()

    def sync(self) -> None:
        if self.use_thread:
            self.queue.join()

    def get_var(self, name: str) -> Any:
        event = self.variable_event.get(name)
        if event is not None:
            event.wait()
        with self.cond:
            if name in self.variables:
                return self.variables[name]
            if self.error_ is not None:
                raise ProgramError(f"variable {name!r} was not produced") from self.error_
        raise KeyError(name)

    def set_var(self, name: str, value: Any, meta_info: Any = None) -> None:
        with self.cond:
            self.variables[name] = value
            if meta_info is not None:
                self.meta_info[name] = meta_info
            self.variable_event.setdefault(name, threading.Event()).set()
            self.cond.notify_all()

    def fail(self, error: Exception) -> None:
        """Record ``error`` (the first one wins) and wake every reader."""
        with self.cond:
            if self.error_ is None:
                self.error_ = error
            for event in self.variable_event.values():
                event.set()
            self.cond.notify_all()

    def fork(self, size: int) -> list[StreamExecutor]:
        """Children that copy this executor's state. With ``size > 1`` the shared text is first
        committed (``backend.cache_prefix``) so every branch hits the prefix cache."""
        self.sync()
        if size > 1 and self.text_:
            self.submit(CommitLazy())
            self.sync()
        children = []
        for _ in range(size):
            child = StreamExecutor(
                self.backend,
                self.default_sampling_params,
                self.chat_template,
                self.stream,
                self.use_thread,
            )
            with self.cond:
                child.text_ = self.text_
                child.messages_ = list(self.messages_)
                child.images_ = list(self.images_)
                child.cur_images = list(self.cur_images)
                child.variables = dict(self.variables)
                child.meta_info = dict(self.meta_info)
                child.cur_role = self.cur_role
                child.cur_role_begin_pos = self.cur_role_begin_pos
                child.cur_tool_turn = self.cur_tool_turn
                child.var_scope_begin = dict(self.var_scope_begin)
                child.fork_start_text_pos = len(self.text_)
                self.children.append(child)
            for name in child.variables:
                child.variable_event[name] = threading.Event()
                child.variable_event[name].set()
            children.append(child)
        return children

    def all_trace(self) -> list[dict[str, Any]]:
        """This program's backend calls and its branches', in start order."""
        with self.cond:
            entries = list(self.trace)
            children = list(self.children)
        for child in children:
            entries.extend(child.all_trace())
        return sorted(entries, key=lambda e: e["start"])

    # ---- worker side ------------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            expr = self.queue.get()
            try:
                if expr is None:
                    self._finish()
                    return
                self._run_one(expr)
            finally:
                self.queue.task_done()

    def _finish(self) -> None:
        with self.cond:
            self.finished = True
            self.cond.notify_all()
        if global_config.verbosity >= 2:
            logger.info("program %s finished:\n%s", self.sid[:8], self.text_)

    def _run_one(self, expr: Expr) -> None:
        if self.error_ is not None:
            for name in defined_names(expr):
                self.variable_event[name].set()
            return
        try:
            self._execute(expr)
        except Exception as e:  # noqa: BLE001 - stored on the state, surfaced by s.error()
            logger.warning("program %s failed: %r", self.sid[:8], e)
            self.fail(e)

    def _execute(self, expr: Expr) -> None:
        if isinstance(expr, ExprList):
            for sub in expr.exprs:
                self._execute(sub)
        elif isinstance(expr, ConstantText):
            self._fill(expr.value)
        elif isinstance(expr, Gen):
            self._gen(expr)
        elif isinstance(expr, Select):
            self._select(expr)
        elif isinstance(expr, RoleBegin):
            self._role_begin(expr.role)
        elif isinstance(expr, RoleEnd):
            self._role_end(expr.role)
        elif isinstance(expr, ToolMessage):
            self._role_begin("tool")
            self._fill(expr.content)
            extra = {"tool_call_id": expr.tool_call_id, "name": expr.name}
            self._role_end("tool", {k: v for k, v in extra.items() if v is not None})
        elif isinstance(expr, Image):
            with self.cond:
                self.images_.append(expr.data)
                self.cur_images.append(expr.data_url)
            self._fill(self.chat_template.image_token)
        elif isinstance(expr, VarScopeBegin):
            self.var_scope_begin[expr.name] = len(self.text_)
        elif isinstance(expr, VarScopeEnd):
            self.set_var(expr.name, self.text_[self.var_scope_begin.pop(expr.name) :])
        elif isinstance(expr, CommitLazy):
            text = self.text_
            self._call(
                "cache_prefix", None, text, {}, lambda: (self.backend.cache_prefix(text), {})
            )
        else:
            raise TypeError(f"cannot execute {type(expr).__name__}")

    def _fill(self, text: str) -> None:
        with self.cond:
            self.text_ += text
            self.cond.notify_all()

    def _prompt(self) -> Prompt:
        with self.cond:
            return Prompt(self.text_, list(self.messages_), list(self.images_))

    def resolve_sampling_params(self, expr: Gen) -> SamplingParams:
        """Run defaults, overridden by the gen's non-None fields; the template's stops appended."""
        params = expr.resolve(self.default_sampling_params)
        extra = tuple(s for s in self.chat_template.stop_str if s not in params.stop)
        return dataclasses.replace(params, stop=params.stop + extra) if extra else params

    def _call(
        self,
        kind: str,
        name: str | None,
        prompt_text: str,
        params: dict[str, Any],
        fn: Callable[[], tuple[Any, dict[str, Any]]],
        trace_fields: Callable[[Any], dict[str, Any]] | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """Run one backend call and record it in the trace (also when it raises);
        ``trace_fields(output)`` gives entries that replace the recorded ones."""
        start = time.time()
        t0 = time.perf_counter()
        entry: dict[str, Any] = {
            "kind": kind,
            "name": name,
            "sid": self.sid[:8],
            "prompt": prompt_text,
            "params": params,
            "start": start,
        }
        try:
            output, meta = fn()
        except Exception as e:
            entry.update(output=None, meta_info={}, error=repr(e))
            raise
        else:
            entry.update(output=output, meta_info=meta, error=None)
            if trace_fields is not None:
                entry.update(trace_fields(output))
        finally:
            entry["latency"] = time.perf_counter() - t0
            entry["cached_tokens"] = (entry.get("meta_info") or {}).get("cached_tokens")
            with self.cond:
                self.trace.append(entry)
        return output, meta

    def _gen(self, expr: Gen) -> None:
        if expr.tools is not None:
            self._gen_tools(expr)
            return
        params = self.resolve_sampling_params(expr)
        prompt = self._prompt()
        name = expr.name
        record = {**params.to_native(), **params.logprob_kwargs()}

        def stream() -> tuple[str, dict[str, Any]]:
            pieces: list[str] = []
            meta: dict[str, Any] = {}
            for delta, meta in self.backend.generate_stream(prompt, params):
                pieces.append(delta)
                with self.cond:
                    self.text_ += delta
                    if name is not None:
                        self.partial[name] = self.partial.get(name, "") + delta
                        self.meta_info[name] = meta
                    self.cond.notify_all()
            return "".join(pieces), meta

        if self.stream:
            with self.cond:
                if name is not None:
                    self.partial[name] = ""
            output, meta = self._call("generate_stream", name, prompt.text, record, stream)
        else:
            call = lambda: self.backend.generate(prompt, params)  # noqa: E731
            output, meta = self._call("generate", name, prompt.text, record, call)
            self._fill(output)
        if name is not None:
            self.set_var(name, output, meta)

    def _gen_tools(self, expr: Gen) -> None:
        """A gen that may call tools: one chat turn (never streamed in pieces). The text gets
        the backend's raw output; the variable the content; meta_info the ``tool_calls``."""
        if self.cur_role != "assistant" or self.text_[self.cur_role_begin_pos :].strip():
            raise ToolPositionError(
                "a gen with tools must come right after an assistant turn begins "
                "(s += sgl.assistant(sgl.gen('x', tools=...))): its prompt is the chat so far, "
                "rendered by the model's chat template with the tools"
            )
        if self.cur_images:
            raise ValueError("a gen with tools cannot follow an image in the same turn")
        params = self.resolve_sampling_params(expr)
        if params.n != 1:
            raise ValueError("a gen with tools takes n=1; use s.fork(n) for several samples")
        prompt = self._prompt()
        spec = expr.tools
        record = {**params.to_native(), **params.logprob_kwargs(), **spec.summary()}

        def call() -> tuple[ToolOutput, dict[str, Any]]:
            out = self.backend.generate_tools(prompt, params, spec)
            return out, {**out.meta_info, "tool_calls": out.calls}

        def trace_fields(out: ToolOutput) -> dict[str, Any]:
            fields: dict[str, Any] = {"output": out.text, "tool_calls": out.calls}
            if out.prompt_text is not None:
                fields["prompt"] = out.prompt_text
            return fields

        out, meta = self._call("generate", expr.name, prompt.text, record, call, trace_fields)
        self._fill(out.text)
        with self.cond:
            self.cur_tool_turn = (len(self.text_), out.content, out.calls) if out.calls else None
            if self.stream and expr.name is not None:
                self.partial[expr.name] = out.content
        if expr.name is not None:
            self.set_var(expr.name, out.content, meta)

    def _select(self, expr: Select) -> None:
        prompt = self._prompt()
        method = expr.choices_method or token_length_normalized
        choices = list(expr.choices)
        record = {"choices": choices, "temperature": expr.temperature}
        record["choices_method"] = type(method).__name__

        def call() -> tuple[str, dict[str, Any]]:
            decision = self.backend.select(prompt, choices, expr.temperature, method)
            return decision.decision, decision.meta_info

        decision, meta = self._call("select", expr.name, prompt.text, record, call)
        self._fill(decision)
        if expr.name is not None:
            self.set_var(expr.name, decision, meta)

    def _role_begin(self, role: str) -> None:
        if self.cur_role is not None:
            raise ValueError(f"role {role!r} opened inside role {self.cur_role!r}")
        default = self.chat_template.default_system_prompt
        if role != "system" and not self.messages_ and default:
            self._role_begin("system")
            self._fill(default)
            self._role_end("system")
        prefix, _ = self.chat_template.get_prefix_and_suffix(role, self.messages_)
        self._fill(prefix)
        self.cur_role = role
        self.cur_role_begin_pos = len(self.text_)

    def _role_end(self, role: str, extra: dict[str, Any] | None = None) -> None:
        """Close ``role``; its message gets ``extra`` fields (a tool message's id), and an
        assistant turn whose tool gen made calls gets ``tool_calls`` and, as content, the gen's
        content plus any text after the gen (the raw call text is not content)."""
        if self.cur_role != role:
            raise ValueError(f"{role}_end without a matching {role}_begin (open: {self.cur_role})")
        content = self.text_[self.cur_role_begin_pos :].lstrip()
        tool_turn = self.cur_tool_turn
        if tool_turn is not None:
            end, gen_content, _ = tool_turn
            content = (gen_content + self.text_[end:]).lstrip()
        _, suffix = self.chat_template.get_prefix_and_suffix(role, self.messages_)
        self._fill(suffix)
        message: dict[str, Any] = {"role": role, "content": content, **(extra or {})}
        if tool_turn is not None:
            message["tool_calls"] = tool_turn[2]
        if self.cur_images:
            parts: list[dict[str, Any]] = [{"type": "text", "text": content}]
            for url in self.cur_images:
                parts.append({"type": "image_url", "image_url": {"url": url}})
            message["content"] = parts
        with self.cond:
            self.messages_.append(message)
            self.cur_images = []
            self.cur_role = None
            self.cur_tool_turn = None
            self.cond.notify_all()
