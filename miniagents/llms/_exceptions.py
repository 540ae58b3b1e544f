"""The error tree of the LLM layer.

Every failure of an LLM call is raised as an :class:`LLMError` subclass::

    LLMError
    ├── LLMConnectionError        (also a ConnectionError) the server could not be reached / the connection broke
    ├── LLMTimeoutError           (also a TimeoutError) connect, read or whole-call timeout
    ├── TruncatedStreamError      the stream ended before its terminal event ([DONE] / message_stop / finish)
    ├── MalformedResponseError    a 2xx response that is not a well-formed event stream of the provider
    ├── ToolRoundsExceededError   the model still asked for tools after ``max_tool_rounds`` rounds
    ├── OutputValidationError     the structured output (``output_type=``) stayed invalid after ``output_retries``
    ├── UsageLimitExceededError   the call's usage reached its ``usage_limit`` while the model asked for more
    └── APIStatusError            the provider answered with an error (HTTP status or an error event mid-stream)
        ├── BadRequestError           400, 413, 422 and other 4xx (but 408 and 409: plain APIStatusError)
        │   └── ContextLengthError        the prompt does not fit the model's context window
        ├── AuthenticationError       401
        ├── PermissionDeniedError     403
        ├── NotFoundError             404 (e.g. unknown model)
        ├── RateLimitError            429 (``retry_after``, ``rate_limit_headers``)
        └── ServerError               5xx
            └── OverloadedError           529 / ``overloaded_error``

Guarantees: errors carry the HTTP ``status`` (``None`` for transport errors and mid-stream error events), the
provider's error ``error_type``/``code`` and ``message``, the provider ``request_id`` and the ``provider`` name —
and never the API key: neither ``str()``, ``repr()`` nor any attribute of these errors contains request headers,
a key that the server echoed in its error body is replaced by ``<redacted>`` (:meth:`LLMError.redact`),
and transport exceptions are neither chained nor kept as ``__context__`` (their type and text are kept in
``message``).  Problems of the call's own configuration found before anything is sent (an API key or header
value with non-ASCII characters, an invalid base URL) raise a plain :class:`LLMError` that names the header or
option, never its value; so does an input the provider is known to reject (an Anthropic user turn with no
text), naming the agent and the input message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from miniagents._frozen import EMPTY, FrozenDict
from miniagents._secrets import redact_text

if TYPE_CHECKING:
    from miniagents.llms._usage import Usage, UsageLimit

__all__ = [
    "APIStatusError",
    "AuthenticationError",
    "BadRequestError",
    "ContextLengthError",
    "LLMConnectionError",
    "LLMError",
    "LLMTimeoutError",
    "MalformedResponseError",
    "NotFoundError",
    "OutputValidationError",
    "OverloadedError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "ToolRoundsExceededError",
    "TruncatedStreamError",
    "UsageLimitExceededError",
]


class LLMError(Exception):
    """Base class of every error raised by the LLM agents.

    Attributes:
        message: a human-readable description (the provider's message when it sent one).
        status: the HTTP status of the failed response, or ``None`` (transport errors, mid-stream errors).
        error_type: the provider's error type (``"rate_limit_error"``, ``"invalid_request_error"`` ...) or ``None``.
        code: the provider's error code (OpenAI ``code``, e.g. ``"model_not_found"``) or ``None``.
        request_id: the provider's request id (``x-request-id`` / ``request-id`` header) or ``None``.
        provider: ``"openai"`` or ``"anthropic"`` (``None`` when unknown).
        body: the parsed JSON error body (or its text) when the provider sent one; never request data.

    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        code: str | None = None,
        request_id: str | None = None,
        provider: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_type = error_type
        self.code = code
        self.request_id = request_id
        self.provider = provider
        self.body = body

    def __str__(self) -> str:
        details = []
        if self.status is not None:
            details.append(f"status={self.status}")
        if self.error_type:
            details.append(f"type={self.error_type}")
        if self.code:
            details.append(f"code={self.code}")
        if self.request_id:
            details.append(f"request_id={self.request_id}")
        prefix = f"{self.provider}: " if self.provider else ""
        suffix = f" ({', '.join(details)})" if details else ""
        return f"{prefix}{self.message}{suffix}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, status={self.status!r}, "
            f"error_type={self.error_type!r}, code={self.code!r}, request_id={self.request_id!r}, "
            f"provider={self.provider!r})"
        )

    def redact(self, secrets: Sequence[str]) -> None:
        """Replace every occurrence of *secrets* in ``message``, ``body`` and ``args`` with ``<redacted>``.

        The LLM agents call it once on every error of a model request, with the request's API key and the
        values of its secret-named headers and query parameters, before the error is raised, traced, stored or
        logged: a server that echoes the key in its error body (some proxies and compatible servers do) must
        not leak it through ``str()``, ``repr()``, ``body``, pickles, ``CallRecord.error`` or spans.
        """
        if not secrets:
            return
        self.message = redact_text(self.message, secrets)
        self.body = _redact_value(self.body, secrets)
        self.args = tuple(_redact_value(arg, secrets) for arg in self.args)
        for name in ("error_type", "code", "request_id"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, redact_text(value, secrets))

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps the keyword-only attributes when pickled (e.g. sent to another process).
        return (_rebuild, (type(self), self.message, self._state()))

    def _state(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "error_type": self.error_type,
            "code": self.code,
            "request_id": self.request_id,
            "provider": self.provider,
            "body": self.body,
        }


def _redact_value(value: Any, secrets: Sequence[str]) -> Any:
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, dict):
        return {redact_text(str(k), secrets): _redact_value(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(v, secrets) for v in value)
    return value


def _rebuild(cls: type[LLMError], message: str, state: dict[str, Any]) -> LLMError:
    return cls(message, **state)


class LLMConnectionError(LLMError, ConnectionError):
    """The server could not be reached, or the connection broke before the response started."""


class LLMTimeoutError(LLMError, TimeoutError):
    """A connect, read or whole-call timeout expired."""


class TruncatedStreamError(LLMError):
    """The response stream ended before its terminal event; the tokens already streamed stay visible."""


class MalformedResponseError(LLMError):
    """A successful (2xx) response the client cannot understand.

    The body is not an event stream (``content-type`` other than ``text/event-stream``; ``body`` holds the start
    of it), an event has the wrong shape (e.g. a ``delta`` that is not an object), or the body cannot be decoded
    (a wrong ``content-encoding``).  Never retried: the response had already started.
    """


class ToolRoundsExceededError(LLMError):
    """The model asked for more tool calls after ``max_tool_rounds`` rounds of tool calls."""


class OutputValidationError(LLMError):
    """The model's structured output (``output_type=``) was still invalid after ``output_retries`` retries.

    Attributes:
        agent: the alias of the LLM agent.
        issues: the problems of the last answer, as ``(path, message)`` pairs (``path`` ``""``: the whole
            answer), e.g. ``("city.population", 'expected int, got "many"')``.
        raw: the last answer as the model sent it (the ``final_result`` arguments or the turn's text).
        attempts: how many answers were judged.

    """

    def __init__(
        self,
        message: str,
        *,
        agent: str,
        issues: tuple[tuple[str, str], ...],
        raw: str,
        attempts: int,
        provider: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, provider=provider, request_id=request_id)
        self.agent = agent
        self.issues = issues
        self.raw = raw
        self.attempts = attempts

    def _state(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "issues": self.issues,
            "raw": self.raw,
            "attempts": self.attempts,
            "provider": self.provider,
            "request_id": self.request_id,
        }

    @property
    def paths(self) -> tuple[str, ...]:
        """The paths of the invalid values (``""`` for the whole answer)."""
        return tuple(path for path, _ in self.issues)

    def redact(self, secrets: Sequence[str]) -> None:
        """:meth:`LLMError.redact`, and the model's ``raw`` answer and the ``issues`` (which quote it) too."""
        super().redact(secrets)
        if secrets:
            self.raw = redact_text(self.raw, secrets)
            self.issues = tuple((path, redact_text(text, secrets)) for path, text in self.issues)


class UsageLimitExceededError(LLMError):
    """The call's usage reached its ``usage_limit`` while the model asked for another round.

    No further request was sent and the requested tools were not run; every message already replied (the
    earlier turns, tool results, the turn that asked) stays replied.

    Attributes:
        agent: the alias of the LLM agent whose call stopped.
        limit: the :class:`~miniagents.llms.UsageLimit` of the call.
        usage: the call's :class:`~miniagents.llms.Usage` so far.
        limit_name: which limit was reached (``"total_tokens"``, ``"input_tokens"``, ``"output_tokens"`` or
            ``"requests"``).

    """

    def __init__(
        self,
        message: str,
        *,
        agent: str | None = None,
        limit: UsageLimit | None = None,
        usage: Usage | None = None,
        limit_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.agent = agent
        self.limit = limit
        self.usage = usage
        self.limit_name = limit_name

    def _state(self) -> dict[str, Any]:
        return {
            **super()._state(),
            "agent": self.agent,
            "limit": self.limit,
            "usage": self.usage,
            "limit_name": self.limit_name,
        }


class APIStatusError(LLMError):
    """The provider reported an error: an HTTP error status, or an error event in the stream.

    Attributes:
        retry_after: the delay the server asked for, in seconds (``retry-after-ms``, else ``retry-after`` as
            seconds or an HTTP date; a date in the past gives ``0.0``), or ``None`` when it sent neither (a
            mid-stream error event has no headers).
        rate_limit_headers: the response's rate-limit headers, names lower-cased, as a read-only mapping
            (OpenAI ``x-ratelimit-*``, Anthropic ``anthropic-ratelimit-*``, the IETF draft's ``ratelimit*``);
            empty when there were none.  No other header is kept: never a request or auth header.

    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        rate_limit_headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after
        self.rate_limit_headers: FrozenDict[str, str] = (
            FrozenDict(rate_limit_headers) if rate_limit_headers else EMPTY
        )

    def _state(self) -> dict[str, Any]:
        return {
            **super()._state(),
            "retry_after": self.retry_after,
            "rate_limit_headers": self.rate_limit_headers.to_dict(),
        }


class BadRequestError(APIStatusError):
    """The request was rejected as invalid (400, 413, 422 and other 4xx without a more specific class)."""


class ContextLengthError(BadRequestError):
    """The prompt (plus the requested completion) does not fit the model's context window."""


class AuthenticationError(APIStatusError):
    """The API key is missing or invalid (401)."""


class PermissionDeniedError(APIStatusError):
    """The API key may not use this resource (403)."""


class NotFoundError(APIStatusError):
    """The model or endpoint does not exist (404)."""


class RateLimitError(APIStatusError):
    """Too many requests or tokens, or the quota is exhausted (429).

    ``retry_after`` is how long the server asked to wait (seconds, or ``None``) and ``rate_limit_headers`` the
    provider's ``x-ratelimit-*`` / ``anthropic-ratelimit-*`` headers (limits, remaining, reset times) of the
    response that was refused: the last attempt's, when retries were made.
    """


class ServerError(APIStatusError):
    """The provider failed (5xx)."""


class OverloadedError(ServerError):
    """The provider is overloaded (Anthropic 529 / ``overloaded_error``)."""


_BY_TYPE: dict[str, type[APIStatusError]] = {
    "authentication_error": AuthenticationError,
    "invalid_api_key": AuthenticationError,
    "permission_error": PermissionDeniedError,
    "permission_denied": PermissionDeniedError,
    "not_found_error": NotFoundError,
    "model_not_found": NotFoundError,
    "rate_limit_error": RateLimitError,
    "rate_limit_exceeded": RateLimitError,
    "insufficient_quota": RateLimitError,
    "overloaded_error": OverloadedError,
    "api_error": ServerError,
    "server_error": ServerError,
    "invalid_request_error": BadRequestError,
    "request_too_large": BadRequestError,
    "context_length_exceeded": ContextLengthError,
    "exceed_context_size_error": ContextLengthError,
}

_CONTEXT_PHRASES = (
    "context length",
    "context window",
    "context_length",
    "prompt is too long",
    "exceeds the available context",
    "exceed_context_size",
    "maximum context",
    "too many tokens",
)


def error_class_for(
    status: int | None, error_type: str | None, code: str | None, message: str
) -> type[APIStatusError]:
    """Pick the most specific :class:`APIStatusError` subclass for a provider error."""
    lowered = message.lower()
    if (
        code in ("context_length_exceeded", "exceed_context_size_error")
        or error_type in ("context_length_exceeded", "exceed_context_size_error")
        or (
            (status in (None, 400, 413) or error_type == "invalid_request_error")
            and any(p in lowered for p in _CONTEXT_PHRASES)
        )
    ):
        return ContextLengthError
    if status is not None:
        if status == 400 or status == 413 or status == 422:
            return BadRequestError
        if status == 401:
            return AuthenticationError
        if status == 403:
            return PermissionDeniedError
        if status == 404:
            return NotFoundError
        if status == 429:
            return RateLimitError
        if status == 529 or error_type == "overloaded_error":
            return OverloadedError
        if status >= 500:
            return ServerError
        if 400 <= status < 500 and status not in (408, 409):
            return BadRequestError
        return APIStatusError
    for key in (code, error_type):
        if key and key in _BY_TYPE:
            return _BY_TYPE[key]
    return APIStatusError
