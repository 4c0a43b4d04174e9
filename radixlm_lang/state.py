"""The user's ``s``: ``ProgramState`` (a handle on one ``StreamExecutor``), the fork result
``ProgramStateGroup``, and ``run_program`` which runs one program function.

Reading (``s[name]``, ``s.text()``) blocks until the producing expressions have run; writing
(``s += ...``) never blocks. Errors of backend calls never escape ``run``: they are on
``s.error()``, and reading a variable that was not produced raises ``ProgramError``.
"""

from __future__ import annotations

import asyncio
import html
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from radixlm_lang.backend.base import Backend
from radixlm_lang.interpreter import ProgramError, StreamExecutor
from radixlm_lang.ir import (
    Expr,
    RoleBegin,
    RoleEnd,
    SamplingParams,
    VarScopeBegin,
    VarScopeEnd,
    as_expr,
    role_block,
)


class ExprWriter:
    """The writing half of ``s`` (``+=``, role blocks, ``var_scope``), shared by the real state and
    the tracer; subclasses define where an expression goes (``_submit``)."""

    def _submit(self, expr: Expr) -> None:
        raise NotImplementedError

    def __iadd__(self, other: Expr | str) -> ExprWriter:
        if other is None:
            raise ValueError("cannot add None to a program")
        self._submit(as_expr(other))
        return self

    @contextmanager
    def _scope(self, begin: Expr, end: Expr) -> Iterator[None]:
        self._submit(begin)
        yield
        self._submit(end)

    def _role(self, role: str, expr: Expr | str | None):
        """With ``expr``: add the whole role block. Without: a ``with`` block for the role."""
        if expr is None:
            return self._scope(RoleBegin(role), RoleEnd(role))
        self._submit(role_block(role, expr))
        return None

    def system(self, expr: Expr | str | None = None):
        return self._role("system", expr)

    def user(self, expr: Expr | str | None = None):
        return self._role("user", expr)

    def assistant(self, expr: Expr | str | None = None):
        return self._role("assistant", expr)

    def tool(self, content: Any, tool_call_id: str | None = None, name: str | None = None) -> None:
        """Add a ``tool`` message (the result of the call ``tool_call_id``); see ``sgl.tool``."""
        from radixlm_lang.api import tool

        self._submit(tool(content, tool_call_id, name))

    def var_scope(self, name: str):
        """Everything added inside the ``with`` block becomes variable ``name``."""
        return self._scope(VarScopeBegin(name), VarScopeEnd(name))


class ProgramState(ExprWriter):
    def __init__(self, stream_executor: StreamExecutor) -> None:
        self.stream_executor = stream_executor
        self.ret_value: Any = None

    # ---- writing (the rest is ExprWriter's) -------------------------------------------------
    def _submit(self, expr: Expr) -> None:
        self.stream_executor.submit(expr)

    def fork(self, size: int = 1, position_ids_offset: Any = None) -> ProgramStateGroup:
        return ProgramStateGroup([ProgramState(c) for c in self.stream_executor.fork(size)], self)

    @contextmanager
    def copy(self) -> Iterator[ProgramState]:
        group = self.fork(1)
        try:
            yield group[0]
        finally:
            group.join()

    # ---- reading ----------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        return self.stream_executor.get_var(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.stream_executor.set_var(name, value)

    def __contains__(self, name: str) -> bool:
        return name in self.stream_executor.variables

    def get_var(self, name: str) -> Any:
        return self.stream_executor.get_var(name)

    def set_var(self, name: str, value: Any) -> None:
        self.stream_executor.set_var(name, value)

    def get_meta_info(self, name: str) -> Any:
        event = self.stream_executor.variable_event.get(name)
        if event is not None:
            event.wait()
        return self.stream_executor.meta_info.get(name)

    def tool_calls(self, name: str) -> list[dict[str, Any]]:
        """The tool calls of the gen ``name`` (one made with ``tools=``), as OpenAI dicts
        ``{"id", "type": "function", "function": {"name", "arguments"}}`` with ``arguments``
        a JSON string; ``[]`` when it made none. Blocks like ``s[name]``. After a fork's
        ``join``, one list per branch."""
        self.get_var(name)
        meta = self.get_meta_info(name)
        if isinstance(meta, list):
            return [list((m or {}).get("tool_calls") or []) for m in meta]
        return list((meta or {}).get("tool_calls") or [])

    def text(self) -> str:
        self.sync()
        return self.stream_executor.text_

    def messages(self) -> list[dict[str, Any]]:
        self.sync()
        return self.stream_executor.messages_

    def sync(self) -> None:
        self.stream_executor.sync()

    def error(self) -> Exception | None:
        self.sync()
        return self.stream_executor.error_

    def end(self) -> None:
        self.stream_executor.end()

    def __repr__(self) -> str:
        return f"ProgramState({self.text()!r})"

    # ---- streaming --------------------------------------------------------------------------
    def _chunks(self, var_name: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
        """(new text, meta_info) pairs of the whole text or of one variable, as they arrive."""
        ex = self.stream_executor
        if not ex.stream:
            if var_name is None:
                yield self.text(), {}
            else:
                yield self.get_var(var_name), self.get_meta_info(var_name) or {}
            return

        def source() -> tuple[str, bool]:
            if var_name is None:
                return ex.text_, ex.finished
            event = ex.variable_event.get(var_name)
            if event is not None and event.is_set():
                return ex.variables.get(var_name, ex.partial.get(var_name, "")), True
            return ex.partial.get(var_name, ""), ex.finished

        pos = 0
        while True:
            with ex.cond:
                ex.cond.wait_for(lambda p=pos: len(source()[0]) > p or source()[1])
                text, done = source()
                meta = dict(ex.meta_info.get(var_name) or {}) if var_name else {}
            if len(text) > pos:
                chunk, pos = text[pos:], len(text)
                yield chunk, meta
            if done:
                return

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        for chunk, _ in self._chunks(var_name):
            yield chunk

    async def text_async_iter(
        self, var_name: str | None = None, return_meta_data: bool = False
    ) -> AsyncIterator[Any]:
        chunks = self._chunks(var_name)
        loop = asyncio.get_running_loop()
        end = object()
        while True:
            item = await loop.run_in_executor(None, next, chunks, end)
            if item is end:
                return
            yield item if return_meta_data else item[0]

    # ---- debug trace ------------------------------------------------------------------------
    def trace(self) -> list[dict[str, Any]]:
        """Every backend call of this program (and its fork branches), in start order: kind,
        name, prompt, params, output, meta_info, cached_tokens, latency (s), error."""
        self.sync()
        return self.stream_executor.all_trace()

    def trace_text(self) -> str:
        lines = []
        for i, e in enumerate(self.trace()):
            head = f"#{i} {e['kind']}"
            head += f" [{e['name']}]" if e["name"] else ""
            head += f" sid={e['sid']} {e['latency'] * 1000:.1f} ms cached={e['cached_tokens']}"
            lines.append(head)
            lines.append(f"  params: {json.dumps(e['params'], default=str)}")
            lines.append(f"  prompt: {e['prompt']!r}")
            lines.append(
                f"  output: {e['output']!r}" + (f"  ERROR {e['error']}" if e["error"] else "")
            )
        return "\n".join(lines)

    def trace_html(self) -> str:
        """A self-contained HTML report of ``trace()`` (no scripts, no external assets)."""
        rows = []
        for i, e in enumerate(self.trace()):
            cells = [
                str(i),
                html.escape(e["kind"]),
                html.escape(e["name"] or ""),
                f"{e['latency'] * 1000:.1f}",
                html.escape(str(e["cached_tokens"])),
                f"<pre>{html.escape(json.dumps(e['params'], default=str, indent=1))}</pre>",
                f"<pre>{html.escape(e['prompt'])}</pre>",
                f"<pre>{html.escape(str(e['output']))}</pre>",
                html.escape(e["error"] or ""),
            ]
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        head = "".join(
            f"<th>{h}</th>"
            for h in ("#", "kind", "var", "ms", "cached", "params", "prompt", "output", "error")
        )
        style = (
            "body{font-family:sans-serif}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px;vertical-align:top}"
            "pre{white-space:pre-wrap;max-width:40em;margin:0}"
        )
        return (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>program trace</title>"
            f"<style>{style}</style></head><body><table><tr>{head}</tr>{''.join(rows)}"
            "</table></body></html>"
        )


class ProgramStateGroup:
    """The branches of ``s.fork(n)``; ``+=`` broadcasts (expr), maps (``lambda i``) or zips
    (list); ``join()`` gathers each variable the branches defined into a list on the parent."""

    def __init__(self, states: list[ProgramState], src_state: ProgramState) -> None:
        self.states = states
        self.src_state = src_state

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __iter__(self) -> Iterator[ProgramState]:
        return iter(self.states)

    def __iadd__(self, other: Any) -> ProgramStateGroup:
        if callable(other) and not isinstance(other, Expr):
            for i, s in enumerate(self.states):
                s += other(i)
        elif isinstance(other, list | tuple):
            if len(other) != len(self.states):
                raise ValueError(f"{len(other)} expressions for {len(self.states)} branches")
            for s, expr in zip(self.states, other):
                s += expr
        else:
            for s in self.states:
                s += other
        return self

    def join(self, mode: str = "gather_variable") -> None:
        parent = self.src_state.stream_executor
        for s in self.states:
            s.sync()
        if mode == "gather_variable":
            names: list[str] = []
            for s in self.states:
                names += [n for n in s.stream_executor.submitted_names if n not in names]
            for name in names:
                values = [s.stream_executor.variables.get(name) for s in self.states]
                metas = [s.stream_executor.meta_info.get(name) for s in self.states]
                parent.set_var(name, values, metas)
        elif mode == "concate_and_append":
            texts = [s.text()[s.stream_executor.fork_start_text_pos :] for s in self.states]
            self.src_state += "".join(texts)
        else:
            raise ValueError(f"unknown join mode {mode!r}: gather_variable or concate_and_append")
        for s in self.states:
            if s.stream_executor.error_ is not None:
                parent.fail(s.stream_executor.error_)
            s.end()


def run_program(
    func: Callable[..., Any],
    backend: Backend,
    args: tuple,
    kwargs: dict[str, Any],
    default_sampling_params: SamplingParams,
    stream: bool = False,
    sync: bool = False,
    use_thread: bool = True,
) -> ProgramState:
    """Run ``func(s, *args, **kwargs)``. With ``stream`` the function itself runs in a thread
    and the state is returned at once. An exception raised by the function propagates (outside
    streaming) unless it is a ``ProgramError``, which is already on ``s.error()``."""
    ex = StreamExecutor(
        backend, default_sampling_params, backend.get_chat_template(), stream, use_thread
    )
    state = ProgramState(ex)

    def body() -> None:
        try:
            state.ret_value = func(state, *args, **kwargs)
        except ProgramError:
            pass
        except Exception as e:
            if not stream:
                raise
            ex.fail(e)
        finally:
            ex.end()
        if sync:
            ex.sync()

    if stream:
        threading.Thread(target=body, daemon=True, name=f"sgl-func-{ex.sid[:8]}").start()
    else:
        body()
    return state
