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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from radixlm_lang.api import resolve_backend
from radixlm_lang.global_config import global_config
from radixlm_lang.ir import SAMPLING_FIELDS, Argument, ConstantText, Expr, SamplingParams, flatten
from radixlm_lang.state import ExprWriter, ProgramState, run_program

# The sampling defaults ``run`` / ``run_batch`` accept as keyword arguments (SGLang's list);
# every other keyword is a program argument.
RUN_SAMPLING_FIELDS = frozenset(SAMPLING_FIELDS) - {
    "min_new_tokens", "json_schema", "dtype", "regex",
}  # fmt: skip


class StopTracing(Exception):
    """The traced program needed a real value; the trace ends here."""


class TracerState(ExprWriter):
    """A stand-in for ``s`` that records expressions instead of running them."""

    def __init__(self) -> None:
        self.nodes: list[Expr] = []

    def _submit(self, expr: Expr) -> None:
        self.nodes.append(expr)

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

    def bind(self, **kwargs: Any) -> SglFunction:
        unknown = set(kwargs) - set(self.arg_names)
        if unknown:
            raise TypeError(f"{self.func.__name__} has no arguments {sorted(unknown)}")
        return SglFunction(self.func, self.num_api_spec_tokens, {**self.bind_arguments, **kwargs})

    def _split(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], SamplingParams]:
        """Separate program arguments from sampling defaults in ``run``'s keyword arguments."""
        sampling = {k: kwargs.pop(k) for k in list(kwargs) if k in RUN_SAMPLING_FIELDS}
        return kwargs, SamplingParams(**sampling)

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
