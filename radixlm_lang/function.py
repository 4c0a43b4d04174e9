"""``@function`` → ``SglFunction``: running one program (``run``), a batch (``run_batch``), partial
application (``bind``), and tracing a program for prefix pre-caching.

Tracing runs the function against a ``TracerState`` with ``Argument`` placeholders: it records
the submitted expressions and stops at the first operation that needs a real value (reading a
variable, forking, reading the text). The leading constant text of that record is the prefix
every run of the program shares; ``run_batch`` prefills it once (``backend.cache_prefix``).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from radixlm_lang.api import resolve_backend
from radixlm_lang.global_config import global_config
from radixlm_lang.ir import (
    Argument,
    ConstantText,
    Expr,
    ExprList,
    RoleBegin,
    RoleEnd,
    SamplingParams,
    VarScopeBegin,
    VarScopeEnd,
    as_expr,
    flatten,
)
from radixlm_lang.state import ProgramState, run_program


class StopTracing(Exception):
    """The traced program needed a real value; the trace ends here."""


class TracerState:
    """A stand-in for ``s`` that records expressions instead of running them."""

    def __init__(self) -> None:
        self.nodes: list[Expr] = []

    def __iadd__(self, other: Expr | str) -> TracerState:
        self.nodes.append(as_expr(other))
        return self

    @contextmanager
    def _scope(self, begin: Expr, end: Expr) -> Iterator[None]:
        self.nodes.append(begin)
        yield
        self.nodes.append(end)

    def _role(self, role: str, expr: Expr | str | None):
        if expr is None:
            return self._scope(RoleBegin(role), RoleEnd(role))
        self.nodes.append(ExprList.of(RoleBegin(role), expr, RoleEnd(role)))
        return None

    def system(self, expr: Expr | str | None = None):
        return self._role("system", expr)

    def user(self, expr: Expr | str | None = None):
        return self._role("user", expr)

    def assistant(self, expr: Expr | str | None = None):
        return self._role("assistant", expr)

    def var_scope(self, name: str):
        return self._scope(VarScopeBegin(name), VarScopeEnd(name))

    def __getitem__(self, name: str) -> Any:
        raise StopTracing(name)

    def __getattr__(self, name: str) -> Any:
        raise StopTracing(name)


def extract_prefix_by_tracing(func: Callable[..., Any], arg_names: list[str]) -> str:
    """The constant text every run of ``func`` starts with ("" if tracing finds none)."""
    tracer = TracerState()
    try:
        func(tracer, **{name: Argument(name) for name in arg_names})
    except Exception:  # noqa: BLE001 - any failure just ends the trace
        pass
    prefix = ""
    for node in flatten(tracer.nodes):
        if not isinstance(node, ConstantText):
            break
        prefix += node.value
    return prefix


class SglFunction:
    def __init__(
        self,
        func: Callable[..., Any],
        num_api_spec_tokens: int | None = None,
        bind_arguments: dict[str, Any] | None = None,
    ) -> None:
        self.func = func
        self.num_api_spec_tokens = num_api_spec_tokens
        self.bind_arguments = dict(bind_arguments or {})
        params = list(inspect.signature(func).parameters.values())
        if not params or params[0].name != "s":
            raise TypeError(f"{func.__name__}: the first parameter of an sgl.function must be s")
        self.arg_names = [p.name for p in params[1:]]
        self.arg_defaults = {
            p.name: p.default for p in params[1:] if p.default is not inspect.Parameter.empty
        }

    def bind(self, **kwargs: Any) -> SglFunction:
        unknown = set(kwargs) - set(self.arg_names)
        if unknown:
            raise TypeError(f"{self.func.__name__} has no arguments {sorted(unknown)}")
        return SglFunction(self.func, self.num_api_spec_tokens, {**self.bind_arguments, **kwargs})

    @staticmethod
    def _defaults(
        max_new_tokens: int = 128,
        n: int = 1,
        stop: str | list[str] | None = None,
        stop_token_ids: list[int] | None = None,
        stop_regex: str | list[str] | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = -1,
        min_p: float = 0.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        ignore_eos: bool = False,
        return_logprob: bool | None = None,
        logprob_start_len: int | None = None,
        top_logprobs_num: int | None = None,
        return_text_in_logprobs: bool | None = None,
    ) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=max_new_tokens,
            n=n,
            stop=stop or (),
            stop_token_ids=stop_token_ids or (),
            stop_regex=stop_regex or (),
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            min_p=min_p,
            frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty,
            ignore_eos=ignore_eos,
            return_logprob=return_logprob,
            logprob_start_len=logprob_start_len,
            top_logprobs_num=top_logprobs_num,
            return_text_in_logprobs=return_text_in_logprobs,
        )

    def _split(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], SamplingParams]:
        """Separate program arguments from sampling defaults in ``run``'s keyword arguments."""
        sampling_names = set(inspect.signature(self._defaults).parameters)
        sampling = {k: kwargs.pop(k) for k in list(kwargs) if k in sampling_names}
        return kwargs, self._defaults(**sampling)

    def run(
        self,
        *args: Any,
        stream: bool = False,
        backend: Any = None,
        use_thread: bool = True,
        **kwargs: Any,
    ) -> ProgramState:
        """Run the program; keyword arguments are program arguments or sampling defaults
        (``max_new_tokens``, ``temperature``, ``stop``, ...). Returns at once; reading the
        state waits for the program."""
        arguments, defaults = self._split(dict(kwargs))
        arguments = {**self.bind_arguments, **arguments}
        backend = resolve_backend(backend)
        return run_program(
            self.func, backend, args, arguments, defaults, stream, use_thread=use_thread
        )

    def run_batch(
        self,
        batch_kwargs: list[dict[str, Any] | tuple | list],
        *,
        backend: Any = None,
        num_threads: int | str = "auto",
        progress_bar: bool = False,
        **kwargs: Any,
    ) -> list[ProgramState]:
        """Run one program per item (a dict of arguments, or a tuple of positional ones) on a
        thread pool; the states come back in input order, each finished."""
        if not batch_kwargs:
            return []
        free = [n for n in self.arg_names if n not in self.bind_arguments]
        items: list[dict[str, Any]] = []
        for item in batch_kwargs:
            item = item if isinstance(item, dict) else dict(zip(free, item))
            items.append({**self.bind_arguments, **item})
        unknown, defaults = self._split(dict(kwargs))
        if unknown:
            raise TypeError(f"run_batch got unknown keyword arguments {sorted(unknown)}")
        backend = resolve_backend(backend)

        if global_config.enable_precache_with_tracing and len(items) > 1:
            self.cache(backend)

        if num_threads == "auto":
            num_threads = max(96, (os.cpu_count() or 1) * 16)
        num_threads = max(1, min(int(num_threads), len(items)))

        def one(arguments: dict[str, Any]) -> ProgramState:
            return run_program(self.func, backend, (), arguments, defaults, sync=True)

        bar = None
        if progress_bar:
            from tqdm import tqdm

            bar = tqdm(total=len(items))
        try:
            if num_threads == 1:
                states = []
                for arguments in items:
                    states.append(one(arguments))
                    if bar is not None:
                        bar.update(1)
                return states
            with ThreadPoolExecutor(num_threads) as pool:
                futures = [pool.submit(one, arguments) for arguments in items]
                if bar is not None:
                    for future in futures:
                        future.add_done_callback(lambda _: bar.update(1))
                return [future.result() for future in futures]
        finally:
            if bar is not None:
                bar.close()

    def trace_prefix(self) -> str:
        return extract_prefix_by_tracing(self.func, self.arg_names)

    def cache(self, backend: Any = None) -> str | None:
        """Prefill the traced constant prefix if it is longer than 64 characters; returns it."""
        prefix = self.trace_prefix()
        if len(prefix) > global_config.precache_min_prefix_chars:
            resolve_backend(backend).cache_prefix(prefix)
            return prefix
        return None

    def __call__(self, *args: Any, **kwargs: Any) -> ProgramState:
        return self.run(*args, **kwargs)


def function(
    func: Callable[..., Any] | None = None, *, num_api_spec_tokens: int | None = None
) -> Any:
    """``@function`` or ``@function(num_api_spec_tokens=N)``; the function's first parameter
    must be ``s``. NOTE: API speculative execution is accepted but not implemented."""
    if func is not None:
        return SglFunction(func, num_api_spec_tokens)
    return lambda f: SglFunction(f, num_api_spec_tokens)
