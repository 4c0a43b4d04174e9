"""Explicit wire encoding of the inter-process messages (no pickle).

A registered dataclass becomes ``(MARK, tag, (field values...))``; field values are plain data
(None, bool, int, float, str, and lists / tuples / dicts of those) or registered dataclasses
(alone or as the elements of a list). The result is serialised with :mod:`marshal`, which
handles plain data in C. Only the registered types below can be decoded, so a message from
a foreign or newer peer fails loudly (``CodecError``) instead of executing anything.

Invariant: ``decode(encode(m)) == m`` for every registered message ``m`` (tested).
"""

from __future__ import annotations

import dataclasses
import marshal
from typing import Any

from radixlm.sampling_params import SamplingParams
from radixlm.scheduler.io import (
    AbortRequest,
    AbortRequests,
    DetokInit,
    ReqOutput,
    TokenizedRequest,
)
from radixlm.server import io_struct

MARK = b"\x00radixlm"
_VERSION = 1

_TYPES: list[type] = [
    SamplingParams,
    TokenizedRequest,
    AbortRequest,
    AbortRequests,
    ReqOutput,
    DetokInit,
    io_struct.GenerateReqs,
    io_struct.FlushCacheReq,
    io_struct.GetStatsReq,
    io_struct.SchedulerReady,
    io_struct.SchedulerFailed,
    io_struct.DetokenizerReady,
    io_struct.RequestRejected,
    io_struct.ControlReply,
    io_struct.Heartbeat,
    io_struct.BatchOutputs,
    io_struct.BatchTextOutputs,
]
_TAG = {cls: cls.__name__ for cls in _TYPES}
_CLS = {cls.__name__: cls for cls in _TYPES}
_FIELDS = {cls: [f.name for f in dataclasses.fields(cls)] for cls in _TYPES}


class CodecError(ValueError):
    """A message could not be encoded or decoded."""


def _enc(value: Any) -> Any:
    cls = type(value)
    if cls in _TAG:
        return (MARK, _TAG[cls], tuple(_enc(getattr(value, n)) for n in _FIELDS[cls]))
    if cls is list and value and type(value[0]) in _TAG:
        return [_enc(v) for v in value]
    if dataclasses.is_dataclass(value):
        raise CodecError(f"{cls.__name__} is not a registered message type")
    return value  # plain data: marshal checks it


def _dec(value: Any) -> Any:
    if type(value) is tuple and len(value) == 3 and value[0] == MARK:
        cls = _CLS.get(value[1]) if type(value[1]) is str else None
        if cls is None:
            raise CodecError(f"unknown message type {value[1]!r}")
        names = _FIELDS[cls]
        if type(value[2]) is not tuple:
            raise CodecError(f"{value[1]} fields are a {type(value[2]).__name__}, not a tuple")
        if len(names) != len(value[2]):
            raise CodecError(f"{value[1]} has {len(value[2])} fields, expected {len(names)}")
        return cls(**{n: _dec(v) for n, v in zip(names, value[2])})
    if type(value) is list and value and type(value[0]) is tuple and value[0][:1] == (MARK,):
        return [_dec(v) for v in value]
    return value


def encode(msg: Any) -> bytes:
    try:
        return marshal.dumps((_VERSION, _enc(msg)))
    except ValueError as e:  # marshal: unmarshallable object somewhere in the message
        raise CodecError(f"cannot encode {type(msg).__name__}: {e}") from e


def decode(data: bytes) -> Any:
    try:
        version, body = marshal.loads(data)
    except (EOFError, ValueError, TypeError) as e:
        raise CodecError(f"malformed message: {e}") from e
    if version != _VERSION:
        raise CodecError(f"message version {version} != {_VERSION}")
    return _dec(body)
