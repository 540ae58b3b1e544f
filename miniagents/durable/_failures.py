"""The failure marker of an LLM exchange that failed: what a step records so that a replay raises the same error.

A marker is JSON data (it goes through DBOS's portable JSON serializer with the rest of the step's record):
the error's class, named by its place in the LLM layer's exception tree, and its ``message``, ``status``,
``error_type``, ``code``, ``request_id`` and ``provider`` (plus ``retry_after`` and ``rate_limit_headers`` for
an :class:`~miniagents.llms.APIStatusError`).  Never its ``body`` (the provider's parsed error body: the
message is taken from it, and a server may echo request data in the rest), never a request header, never a
pickle.  Every string of the marker has the request's secrets (``ExchangeRequest.secrets``: its API key, the
values of its secret-named headers and query parameters) replaced, as ``LLMError.redact`` does to the error
the agent sees: a server that echoes the key in its error message does not get it into the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import miniagents.llms._exceptions as _llm_exceptions
from miniagents._secrets import redact_text
from miniagents.llms._exceptions import (
    APIStatusError,
    LLMError,
    OutputValidationError,
    UsageLimitExceededError,
)

__all__ = ["decode_failure", "encode_failure", "recordable_class"]

#: The classes a marker can name: the LLM layer's exception tree, less the errors of a whole call (structured
#: output, usage limit), which an exchange does not raise and whose constructors take more than these fields.
_CLASSES: dict[str, type[LLMError]] = {
    name: value
    for name, value in vars(_llm_exceptions).items()
    if isinstance(value, type)
    and issubclass(value, LLMError)
    and not issubclass(value, (OutputValidationError, UsageLimitExceededError))
}

_FIELDS = ("status", "error_type", "code", "request_id", "provider")


def recordable_class(error: BaseException) -> type[LLMError] | None:
    """The class of the exception tree a marker of *error* names (its nearest one), or ``None`` (not recorded)."""
    if not isinstance(error, LLMError):
        return None
    for cls in type(error).__mro__:
        if isinstance(cls, type) and _CLASSES.get(cls.__name__) is cls:
            return cls
    return None


def encode_failure(error: LLMError, secrets: Sequence[str] = ()) -> dict[str, Any]:
    """The marker of *error* with *secrets* redacted (see the module docstring).

    *error* must have a :func:`recordable_class`; it is not changed.
    """
    cls = recordable_class(error)
    if cls is None:
        raise TypeError(f"{type(error).__name__} is not an LLM exchange error")

    def clean(value: Any) -> Any:
        return redact_text(value, secrets) if isinstance(value, str) and secrets else value

    marker: dict[str, Any] = {"class": cls.__name__, "message": clean(str(error.message))}
    for name in _FIELDS:
        marker[name] = clean(getattr(error, name))
    if issubclass(cls, APIStatusError) and isinstance(error, APIStatusError):
        marker["retry_after"] = error.retry_after
        marker["rate_limit_headers"] = {
            clean(name): clean(value) for name, value in error.rate_limit_headers.items()
        }
    return marker


def decode_failure(marker: dict[str, Any]) -> LLMError:
    """The error a marker describes: the same class, message, status, request id, provider (no ``body``)."""
    cls = _CLASSES.get(str(marker.get("class")), LLMError)
    kwargs: dict[str, Any] = {name: marker.get(name) for name in _FIELDS}
    if issubclass(cls, APIStatusError):
        kwargs["retry_after"] = marker.get("retry_after")
        kwargs["rate_limit_headers"] = marker.get("rate_limit_headers") or None
    return cls(str(marker.get("message", "")), **kwargs)
