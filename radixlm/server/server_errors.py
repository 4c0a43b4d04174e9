"""The server's own typed errors (each a :class:`~radixlm.errors.RadixLMError` with its HTTP
status): the scheduler gone or the server shutting down (503), and a model it does not serve
(404 ``model_not_found``, on the OpenAI routes and on ``/generate``), with the one check that
raises it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from radixlm.errors import CapacityError, RequestError


class SchedulerUnavailable(CapacityError):
    """The scheduler process died or hung, or the server is shutting down (503)."""


class ServerDraining(SchedulerUnavailable):
    """The shutdown drain's deadline passed before the request finished."""


class ModelNotFound(RequestError):
    """A request naming a model this server does not serve."""

    http_status = 404
    code = "model_not_found"
    param = "model"

    def __init__(self, model: Any, served: Iterable[str]) -> None:
        super().__init__(
            f"the model {model!r} does not exist on this server; it serves "
            f"{sorted(served)} (--served-model-name)"
        )


def check_model(
    model: Any, accepted: frozenset[str] | None = None, served: Iterable[str] = ()
) -> None:
    """A request's ``model`` (None: absent, served) against the names the server accepts
    (None: any): a 400 for a non-string, a 404 naming the ``served`` ones for another model.
    One check for the OpenAI routes and ``/generate`` (where sglang-router forwards it)."""
    if model is None:
        return
    if not isinstance(model, str):
        raise RequestError(f"model must be a string, got {type(model).__name__}")
    if accepted is not None and model not in accepted:
        raise ModelNotFound(model, served)
