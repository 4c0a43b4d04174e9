"""Typed errors of the runtime.

Every error a user can cause is a subclass of :class:`RadixLMError` whose message says what to
fix. The server maps them to HTTP codes in one place (``http_status``); library code never
raises bare ``Exception`` or uses ``assert`` on user input.
"""

from __future__ import annotations


class RadixLMError(Exception):
    """Base class of all RadixLM errors."""

    http_status: int = 500


class ConfigError(RadixLMError):
    """An engine/server option is unknown or has an invalid value."""

    http_status = 400


class RequestError(RadixLMError):
    """A generation request is malformed (bad prompt, bad sampling parameter, ...)."""

    http_status = 400


class GrammarError(RequestError):
    """A regex / JSON schema / choice constraint cannot be compiled."""


class CapacityError(RadixLMError):
    """The runtime cannot take the request now (queue full, pool too small)."""

    http_status = 503


class ModelLoadError(RadixLMError):
    """A checkpoint cannot be loaded (missing files, unsupported architecture, bad weights)."""

    http_status = 500
