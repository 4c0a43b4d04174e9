"""The DSL's intermediate representation: immutable expression nodes and sampling parameters.

Every node is a frozen dataclass; a program is the sequence of nodes submitted with ``s += ...``.
``a + b`` of nodes (or a node and a ``str``) builds a flat ``ExprList``. ``SamplingParams`` holds
the resolved parameters of one ``gen`` (run defaults overridden by the gen's own fields) and
converts them to a native ``/generate`` ``sampling_params`` dict or to OpenAI keyword arguments.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from radixlm_lang.tools import ToolSpec

logger = logging.getLogger(__name__)

# SamplingParams fields that are top-level /generate fields, not ``sampling_params`` entries.
LOGPROB_FIELDS = (
    "return_logprob",
    "logprob_start_len",
    "top_logprobs_num",
    "return_text_in_logprobs",
)

# dtype → constraining regex (and extra stop strings), as SGLang's RuntimeEndpoint does it.
REGEX_INT = r"[-+]?[0-9]+[ \n]*"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+[ \n]*"
REGEX_STR = r'"[\w\d\s]*"'
REGEX_BOOL = r"(True|False)"
DTYPE_REGEX: dict[str, str] = {
    "int": REGEX_INT,
    "float": REGEX_FLOAT,
    "str": REGEX_STR,
    "bool": REGEX_BOOL,
}
DTYPE_STOPS: dict[str, tuple[str, ...]] = {"int": (" ", "\n"), "float": (" ", "\n")}


def normalize_dtype(dtype: Any) -> str | None:
    """``int``/``float``/``str``/``bool`` (the type or its name) → its name; None stays None."""
    if dtype is None:
        return None
    name = dtype.__name__ if isinstance(dtype, type) else str(dtype)
    if name not in DTYPE_REGEX:
        raise ValueError(f"invalid dtype {dtype!r}: use one of int, float, str, bool")
    return name


def as_tuple(value: Any) -> tuple:
    """None → ``()``; one str/int → a 1-tuple; any other iterable → a tuple."""
    if value is None:
        return ()
    if isinstance(value, str | int):
        return (value,)
    return tuple(value)


@dataclass(frozen=True)
class SamplingParams:
    """SGLang's ``SglSamplingParams``: fields and defaults match; ``stop*`` are tuples."""

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    n: int = 1
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    stop_regex: tuple[str, ...] = ()
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    ignore_eos: bool = False
    return_logprob: bool | None = None
    logprob_start_len: int | None = None
    top_logprobs_num: int | None = None
    return_text_in_logprobs: bool | None = None
    json_schema: str | None = None
    dtype: str | None = None
    regex: str | None = None

    def __post_init__(self) -> None:
        for name in ("stop", "stop_token_ids", "stop_regex"):
            object.__setattr__(self, name, as_tuple(getattr(self, name)))
        object.__setattr__(self, "dtype", normalize_dtype(self.dtype))

    def override(self, **fields: Any) -> SamplingParams:
        """A copy with every non-None field of ``fields`` replacing this one's."""
        return dataclasses.replace(self, **{k: v for k, v in fields.items() if v is not None})

    def _regex_and_stop(self) -> tuple[str | None, tuple[str, ...]]:
        """dtype wins over ``regex`` (with a warning); int/float add the stops ``" "``, ``"\\n"``."""
        if self.dtype is None:
            return self.regex, self.stop
        if self.regex is not None:
            logger.warning("both dtype=%s and regex are set; only dtype is used", self.dtype)
        extra = tuple(s for s in DTYPE_STOPS.get(self.dtype, ()) if s not in self.stop)
        return DTYPE_REGEX[self.dtype], self.stop + extra

    def to_native(self) -> dict[str, Any]:
        """The native ``/generate`` ``sampling_params`` dict. Scalars are always sent; list
        fields only when non-empty; ``regex``/``json_schema`` only when set. The logprob fields
        are request-level (see ``logprob_kwargs``)."""
        regex, stop = self._regex_and_stop()
        out: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "n": self.n,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "ignore_eos": self.ignore_eos,
        }
        if stop:
            out["stop"] = list(stop)
        if self.stop_token_ids:
            out["stop_token_ids"] = list(self.stop_token_ids)
        if self.stop_regex:
            out["stop_regex"] = list(self.stop_regex)
        if regex is not None:
            out["regex"] = regex
        if self.json_schema is not None:
            out["json_schema"] = self.json_schema
        return out

    def logprob_kwargs(self) -> dict[str, Any]:
        """The top-level ``/generate`` fields (``return_logprob``, ...) that are set."""
        out = {k: getattr(self, k) for k in LOGPROB_FIELDS}
        return {k: v for k, v in out.items() if v is not None}

    def to_openai(self) -> dict[str, Any]:
        """Keyword arguments of the OpenAI completions/chat API (top_k and min_p are dropped)."""
        return {
            "max_tokens": self.max_new_tokens,
            "stop": list(self.stop) or None,
            "n": self.n,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
        }


SAMPLING_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SamplingParams))


class Expr:
    """Base of all IR nodes; ``+`` concatenates into an ``ExprList``."""

    def __add__(self, other: Expr | str) -> ExprList:
        return ExprList.of(self, other)

    def __radd__(self, other: Expr | str) -> ExprList:
        return ExprList.of(other, self)


def as_expr(value: Expr | str) -> Expr:
    if isinstance(value, Expr):
        return value
    if isinstance(value, str):
        return ConstantText(value)
    raise TypeError(f"cannot add {type(value).__name__} to a program; use a str or an expression")


@dataclass(frozen=True)
class ConstantText(Expr):
    value: str


@dataclass(frozen=True)
class ExprList(Expr):
    exprs: tuple[Expr, ...]

    @staticmethod
    def of(*items: Expr | str) -> ExprList:
        """Concatenate, flattening nested lists so the IR stays one level deep."""
        flat: list[Expr] = []
        for item in items:
            expr = as_expr(item)
            flat.extend(expr.exprs if isinstance(expr, ExprList) else (expr,))
        return ExprList(tuple(flat))


@dataclass(frozen=True)
class Gen(Expr):
    """A generation; ``overrides`` are the (name, value) pairs the gen set (never None);
    ``tools``: the tools the model may call (a chat turn, see ``radixlm_lang.tools``)."""

    name: str | None
    overrides: tuple[tuple[str, Any], ...] = ()
    tools: ToolSpec | None = None

    def resolve(self, defaults: SamplingParams) -> SamplingParams:
        return defaults.override(**dict(self.overrides))


@dataclass(frozen=True)
class Select(Expr):
    name: str | None
    choices: tuple[str, ...]
    temperature: float = 0.0
    choices_method: Callable[..., Any] | None = None  # None: token_length_normalized


@dataclass(frozen=True)
class RoleBegin(Expr):
    role: str


@dataclass(frozen=True)
class RoleEnd(Expr):
    role: str


def role_block(role: str, expr: Expr | str | None = None) -> ExprList:
    """``expr`` between the begin and end of ``role`` (an empty block when ``expr`` is None)."""
    inner = () if expr is None else (expr,)
    return ExprList.of(RoleBegin(role), *inner, RoleEnd(role))


@dataclass(frozen=True)
class ToolMessage(Expr):
    """A ``tool`` role message: a tool's result, answering the call ``tool_call_id``."""

    content: str
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class Image(Expr):
    data: str = field(repr=False)  # base64
    mime: str = "image/jpeg"  # sniffed from the bytes by ``api.image``

    @property
    def data_url(self) -> str:
        return f"data:{self.mime};base64,{self.data}"


@dataclass(frozen=True)
class VarScopeBegin(Expr):
    name: str


@dataclass(frozen=True)
class VarScopeEnd(Expr):
    name: str


@dataclass(frozen=True)
class CommitLazy(Expr):
    """Ask the backend to prefill the current text (the shared prefix before a fork)."""


@dataclass(frozen=True)
class Argument(Expr):
    """Tracing placeholder for a program argument; formatting it into a str is an error."""

    name: str

    def __str__(self) -> str:
        raise TypeError(f"argument {self.name!r} is a tracing placeholder and has no text")

    def __format__(self, spec: str) -> str:
        return str(self)


def defined_names(expr: Expr) -> list[str]:
    """The variable names that executing ``expr`` will set."""
    if isinstance(expr, ExprList):
        return [n for e in expr.exprs for n in defined_names(e)]
    if isinstance(expr, Gen | Select) and expr.name is not None:
        return [expr.name]
    if isinstance(expr, VarScopeBegin):
        return [expr.name]
    return []


def flatten(exprs: list[Expr]) -> list[Expr]:
    return [e for x in exprs for e in (x.exprs if isinstance(x, ExprList) else (x,))]
