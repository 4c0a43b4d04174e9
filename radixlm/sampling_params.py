"""Per-request sampling parameters: parsing and validation of the SGLang ``sampling_params`` dict.

:meth:`SamplingParams.from_dict` accepts exactly the keys of the SGLang native API; JSON
``null`` means "use the default". Anything malformed raises :class:`RequestError` naming the
field and the accepted range, so the server can answer 400 and the engine keeps serving.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from radixlm.errors import RequestError

GREEDY_TEMPERATURE = 1e-6


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 = whole vocabulary
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    n: int = 1
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    logit_bias: dict[int, float] = field(default_factory=dict)
    sampling_seed: int | None = None
    stream_interval: int | None = None
    # Constraints (at most one): a regex, a JSON schema as JSON text, or an EBNF (Lark / GBNF)
    # grammar (served by the llguidance and auto grammar backends).
    regex: str | None = None
    json_schema: str | None = None
    ebnf: str | None = None

    # ---- derived views -------------------------------------------------------------------
    @property
    def is_greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE or self.top_k == 1

    @property
    def has_penalties(self) -> bool:
        return (
            self.frequency_penalty != 0.0
            or self.presence_penalty != 0.0
            or self.repetition_penalty != 1.0
        )

    # ---- parsing -------------------------------------------------------------------------
    @classmethod
    def valid_keys(cls) -> list[str]:
        return sorted([f.name for f in fields(cls)] + list(_UNSUPPORTED))

    @classmethod
    def refused_keys(cls) -> dict[str, str]:
        """SGLang ``SamplingParams`` fields that are refused whatever the value, and why."""
        return dict(_REFUSED)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, vocab_size: int | None = None) -> SamplingParams:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise RequestError(f"sampling_params must be an object/dict, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(
            k for k in raw if k not in known and k not in _UNSUPPORTED and k not in _REFUSED
        )
        if unknown:
            raise RequestError(
                f"unknown sampling parameter(s) {unknown}; valid keys: {', '.join(cls.valid_keys())}"
            )
        for key in sorted(raw.keys() & _REFUSED.keys()):
            raise RequestError(f"sampling parameter {key!r} is not accepted: {_REFUSED[key]}")
        for key in _UNSUPPORTED:
            if raw.get(key) not in (None, "", [], {}):
                raise RequestError(
                    f"sampling parameter {key!r} is not supported by this server yet (only "
                    "null or empty is accepted)"
                )
        v = {k: val for k, val in raw.items() if k in known and val is not None}
        out: dict[str, Any] = {}
        out["max_new_tokens"] = _int(v, "max_new_tokens", 128, lo=0)
        out["min_new_tokens"] = _int(v, "min_new_tokens", 0, lo=0)
        if out["min_new_tokens"] > out["max_new_tokens"]:
            raise RequestError(
                f"min_new_tokens ({out['min_new_tokens']}) must be <= max_new_tokens "
                f"({out['max_new_tokens']})"
            )
        out["stop"] = _stop_strings(v.get("stop"))
        out["stop_token_ids"] = _token_ids(v.get("stop_token_ids"), "stop_token_ids", vocab_size)
        out["temperature"] = _float(v, "temperature", 1.0, lo=0.0, hint="use 0 for greedy")
        out["top_p"] = _float(v, "top_p", 1.0, lo=0.0, hi=1.0, lo_open=True)
        top_k = _int(v, "top_k", -1)
        if top_k == 0 or top_k < -1:
            raise RequestError(f"top_k must be -1 (whole vocabulary) or >= 1, got {top_k}")
        out["top_k"] = top_k
        out["min_p"] = _float(v, "min_p", 0.0, lo=0.0, hi=1.0)
        out["frequency_penalty"] = _float(v, "frequency_penalty", 0.0, lo=-2.0, hi=2.0)
        out["presence_penalty"] = _float(v, "presence_penalty", 0.0, lo=-2.0, hi=2.0)
        out["repetition_penalty"] = _float(
            v, "repetition_penalty", 1.0, lo=0.0, hi=2.0, lo_open=True
        )
        out["n"] = _int(v, "n", 1, lo=1)
        for name in (
            "ignore_eos",
            "skip_special_tokens",
            "spaces_between_special_tokens",
            "no_stop_trim",
        ):
            default = name in ("skip_special_tokens", "spaces_between_special_tokens")
            out[name] = _bool(v, name, default)
        out["logit_bias"] = _logit_bias(v.get("logit_bias"), vocab_size)
        seed = v.get("sampling_seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise RequestError(f"sampling_seed must be an integer, got {seed!r}")
        out["sampling_seed"] = seed
        interval = v.get("stream_interval")
        if interval is not None:
            out["stream_interval"] = _int(v, "stream_interval", 1, lo=1)
        out.update(_constraint(v))
        return cls(**out)

    @property
    def is_constrained(self) -> bool:
        return self.regex is not None or self.json_schema is not None or self.ebnf is not None


# SGLang's SamplingParams (release radixlm.server.native_request.SGLANG_VERSION) field by field:
# the dataclass fields above are honoured; these belong to features not built yet: accepted as
# null or empty (their default), rejected with a clear message otherwise (never silently
# ignored).
_UNSUPPORTED = ("structural_tag", "stop_regex", "custom_params", "beam_width", "watermark")
# SGLang-internal state, never a request parameter: refused whatever the value.
_REFUSED = dict.fromkeys(
    (
        "stop_strs",
        "stop_regex_strs",
        "stop_str_max_len",
        "stop_regex_max_len",
        "is_normalized",
        "ebnf_full_assistant",
    ),
    "it is SGLang-internal state (filled in by its normalize()), not a request parameter",
)


def _constraint(v: dict) -> dict[str, Any]:
    """``regex`` / ``json_schema`` (string, or an object that is serialised) / ``ebnf``; whether
    the server's grammar backend takes ``ebnf`` is checked by the scheduler."""
    given = [k for k in ("regex", "json_schema", "ebnf") if v.get(k) not in (None, "", [])]
    if len(given) > 1:
        raise RequestError("pass at most one of regex, json_schema and ebnf")
    if not given:
        return {}
    key = given[0]
    value = v[key]
    if key == "json_schema" and isinstance(value, (dict, bool)):
        value = json.dumps(value)
    if not isinstance(value, str):
        raise RequestError(f"{key} must be a string, got {type(value).__name__}")
    return {key: value}


def _int(v: dict, name: str, default: int, lo: int | None = None) -> int:
    x = v.get(name, default)
    if isinstance(x, bool) or not isinstance(x, int):
        if isinstance(x, float) and x.is_integer():
            x = int(x)
        else:
            raise RequestError(f"{name} must be an integer, got {x!r}")
    if lo is not None and x < lo:
        raise RequestError(f"{name} must be >= {lo}, got {x}")
    return x


FLOAT32_SAFE = (1e-30, 1e30)  # magnitudes a sampling value may have (or 0)


def _float(
    v: dict,
    name: str,
    default: float,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hint: str = "",
) -> float:
    x = v.get(name, default)
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise RequestError(f"{name} must be a finite number, got {x!r}")
    x = float(x)
    if x != 0 and not FLOAT32_SAFE[0] <= abs(x) <= FLOAT32_SAFE[1]:
        # The sampler works on float32 logits: such a value overflows them to inf / NaN.
        raise RequestError(
            f"{name}={x!r} is outside what float32 logits can take (|{name}| in "
            f"[{FLOAT32_SAFE[0]:g}, {FLOAT32_SAFE[1]:g}], or 0)"
        )
    bad_lo = lo is not None and (x <= lo if lo_open else x < lo)
    bad_hi = hi is not None and x > hi
    if bad_lo or bad_hi:
        left = "(" if lo_open else "["
        rng = f"{left}{lo}, {hi if hi is not None else 'inf'}]"
        raise RequestError(f"{name} must be in {rng}, got {x}" + (f" ({hint})" if hint else ""))
    return x


def _bool(v: dict, name: str, default: bool) -> bool:
    x = v.get(name, default)
    if not isinstance(x, bool):
        raise RequestError(f"{name} must be true or false, got {x!r}")
    return x


def _stop_strings(x: Any) -> tuple[str, ...]:
    if x is None:
        return ()
    if isinstance(x, str):
        x = [x]
    if not isinstance(x, (list, tuple)) or not all(isinstance(s, str) for s in x):
        raise RequestError(f"stop must be a string or a list of strings, got {x!r}")
    if any(s == "" for s in x):
        raise RequestError("stop strings must be non-empty")
    return tuple(dict.fromkeys(x))


def _token_ids(x: Any, name: str, vocab_size: int | None) -> tuple[int, ...]:
    if x is None:
        return ()
    if isinstance(x, int) and not isinstance(x, bool):
        x = [x]
    if not isinstance(x, (list, tuple, set)) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in x
    ):
        raise RequestError(f"{name} must be a list of integer token ids, got {x!r}")
    for i in x:
        if i < 0 or (vocab_size is not None and i >= vocab_size):
            raise RequestError(
                f"{name} holds token id {i} outside the vocabulary [0, {vocab_size})"
            )
    return tuple(sorted(set(x)))


MAX_LOGIT_BIAS = 1e6
_TOKEN_ID_KEY = re.compile(r"-?[0-9]+")  # ASCII digits only: str.isdigit accepts '²'


def _logit_bias(x: Any, vocab_size: int | None) -> dict[int, float]:
    if x is None:
        return {}
    if not isinstance(x, dict):
        raise RequestError(f"logit_bias must be an object mapping token id -> bias, got {x!r}")
    out: dict[int, float] = {}
    for k, b in x.items():
        if isinstance(k, int) and not isinstance(k, bool):
            tid = k
        elif isinstance(k, str) and _TOKEN_ID_KEY.fullmatch(k.strip()):
            tid = int(k)  # JSON object keys are strings
        else:
            raise RequestError(f"logit_bias key {k!r} is not an integer token id")
        if tid < 0 or (vocab_size is not None and tid >= vocab_size):
            raise RequestError(
                f"logit_bias token id {tid} is outside the vocabulary [0, {vocab_size})"
            )
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b):
            raise RequestError(f"logit_bias[{k!r}] must be a finite number, got {b!r}")
        if abs(b) > MAX_LOGIT_BIAS:
            # Larger values overflow the logits' float32 (inf, then NaN probabilities).
            raise RequestError(
                f"logit_bias[{k!r}] = {b!r} is outside [-{MAX_LOGIT_BIAS:g}, "
                f"{MAX_LOGIT_BIAS:g}]; ±100 already makes a token certain or impossible"
            )
        out[tid] = float(b)
    return out
