"""HTTP plumbing shared by the providers: the pooled client, retries, and error mapping."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext, suppress
from typing import Any

import anyio
import httpx

from miniagents._secrets import redact_text, secret_query_values, secret_values
from miniagents.llms._exceptions import (
    APIStatusError,
    LLMConnectionError,
    LLMError,
    LLMTimeoutError,
    MalformedResponseError,
    TruncatedStreamError,
    error_class_for,
)
from miniagents.llms._exchange import ExchangeRequest, active_exchange
from miniagents.llms._limiting import RequestLimits
from miniagents.llms._retry import RetryPolicy, retry_after_seconds, should_retry_status

__all__ = [
    "DEFAULT_TIMEOUT",
    "HTTP_CLIENT_RESOURCE_KEY",
    "POOL_LIMITS",
    "build_status_error",
    "check_header_values",
    "make_timeout",
    "open_stream",
    "request_secrets",
    "rate_limit_headers_of",
    "shared_http_client",
    "transport_error",
]

logger = logging.getLogger("miniagents.llms")

#: Key of the pooled client in :meth:`MiniAgents.shared_resource`.
HTTP_CLIENT_RESOURCE_KEY = "miniagents.llms.httpx.AsyncClient"

#: Default timeouts of the shared client: 10 s to connect, 10 min between two chunks of a stream.
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=600.0, pool=60.0)
# Client-side mistakes (an illegal header value, a base URL without http/https): retrying cannot help.
_NOT_RETRYABLE = (httpx.LocalProtocolError, httpx.UnsupportedProtocol)
_USER_AGENT = "miniagents-llms/0.1"
_MAX_ERROR_BODY = 64 * 1024


#: The pool of the shared client: no limit on concurrent connections (a healthy server must never see a
#: request fail because the client ran out of connections; concurrency is the rate limiter's job, see
#: ``RateLimit(max_concurrent=)``), and as many idle ones kept for reuse as the official OpenAI client keeps.
POOL_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=100)


def _new_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=DEFAULT_TIMEOUT,
        limits=POOL_LIMITS,
        headers={"user-agent": _USER_AGENT},
        follow_redirects=False,
    )


async def _close_client(client: httpx.AsyncClient) -> None:
    await client.aclose()


def shared_http_client() -> httpx.AsyncClient:
    """Return the pooled client of the current :class:`MiniAgents` context (created on first use).

    It is closed when the context exits, after every agent call finished.
    """
    from miniagents import MiniAgents

    client: httpx.AsyncClient = MiniAgents.current().shared_resource(
        HTTP_CLIENT_RESOURCE_KEY, _new_client, aclose=_close_client
    )
    return client


def make_timeout(base: httpx.Timeout, *, connect: float | None, read: float | None) -> httpx.Timeout:
    """Return *base* with the given connect/read timeouts replaced (``None`` keeps the client's value)."""
    if connect is None and read is None:
        return base
    return httpx.Timeout(
        connect=base.connect if connect is None else connect,
        read=base.read if read is None else read,
        write=base.write,
        pool=base.pool,
    )


def request_id_of(headers: Mapping[str, str]) -> str | None:
    """The provider request id from the response headers (OpenAI ``x-request-id``, Anthropic ``request-id``)."""
    return headers.get("x-request-id") or headers.get("request-id") or None


def _parse_error_body(raw: bytes) -> tuple[Any, str | None, str | None, str | None, str | None]:
    """Return ``(body, message, type, code, request_id)`` from any of the error shapes servers send."""
    text = raw[:_MAX_ERROR_BODY].decode("utf-8", errors="replace")
    try:
        body: Any = json.loads(text)
    except ValueError:
        stripped = text.strip()
        return stripped or None, stripped[:1000] or None, None, None, None
    message = error_type = code = request_id = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = _str_or_none(error.get("message"))
            error_type = _str_or_none(error.get("type"))
            code = _str_or_none(error.get("code"))
        elif isinstance(error, str):
            message = error
        if message is None and "detail" in body:
            detail = body["detail"]
            message = detail if isinstance(detail, str) else json.dumps(detail, ensure_ascii=False)
        if message is None and isinstance(body.get("message"), str):
            message = body["message"]
        if error_type is None and body.get("type") not in (None, "error"):
            error_type = _str_or_none(body.get("type"))
        request_id = _str_or_none(body.get("request_id"))
    elif isinstance(body, str):
        message = body
    return body, message, error_type, code, request_id


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


#: Response headers kept on errors as ``rate_limit_headers`` (OpenAI, Anthropic, the IETF RateLimit draft).
_RATE_LIMIT_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-", "ratelimit")


def rate_limit_headers_of(headers: Mapping[str, str]) -> dict[str, str]:
    """The rate-limit headers of a response (names lower-cased); no other header, so never an auth header."""
    return {
        name.lower(): value
        for name, value in headers.items()
        if name.lower().startswith(_RATE_LIMIT_PREFIXES)
    }


def build_status_error(
    status: int | None, headers: Mapping[str, str], raw: bytes, *, provider: str
) -> APIStatusError:
    """Build the typed error for an error response (or a mid-stream error event when *status* is ``None``).

    The error carries the server's ``retry_after`` (seconds, never negative) and its rate-limit headers.
    """
    body, message, error_type, code, body_request_id = _parse_error_body(raw)
    if not message:
        message = f"HTTP {status}" if status is not None else "error event in the stream"
    cls = error_class_for(status, error_type, code, message)
    retry_after = retry_after_seconds(headers)
    return cls(
        message,
        status=status,
        error_type=error_type,
        code=code,
        request_id=request_id_of(headers) or body_request_id,
        provider=provider,
        body=body,
        retry_after=None if retry_after is None else max(0.0, retry_after),
        rate_limit_headers=rate_limit_headers_of(headers),
    )


#: Secrets shorter than this are not searched for in error texts (they would rewrite ordinary words).
_MIN_SECRET = 4


def request_secrets(url: str, headers: Mapping[str, str], api_key: str) -> tuple[str, ...]:
    """The secrets of one request: the API key, the secret-named headers' values and query parameters.

    Longest first (see :func:`miniagents._secrets.secret_values`), for :meth:`LLMError.redact`.
    """
    found = {*secret_values(headers.items(), min_length=_MIN_SECRET), *secret_query_values(url)}
    if api_key:
        found.add(api_key)
    return tuple(sorted((s for s in found if len(s) >= _MIN_SECRET), key=len, reverse=True))


def transport_error(
    exc: Exception,
    *,
    provider: str,
    streaming: bool,
    request_id: str | None = None,
    secrets: Iterable[str] = (),
) -> LLMError:
    """Translate an ``httpx`` exception (transport or decoding); the original is not chained (it holds the request).

    The exception text is kept with *secrets* redacted (httpx quotes illegal header values verbatim).  Raise the
    result outside the ``except`` block that caught *exc*, so that it is not kept as ``__context__`` either.
    """
    detail = redact_text(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, secrets)
    if isinstance(exc, httpx.PoolTimeout):
        # Nothing reached the server: the client's own connection pool was full for the whole pool timeout.
        return LLMTimeoutError(
            f"no free connection in the HTTP client's pool (every one of its max_connections was busy for its "
            f"whole pool timeout; the request was never sent): raise the limits of the http_client, or limit "
            f"concurrency with a RateLimiter ({detail})",
            provider=provider,
            request_id=request_id,
        )
    if isinstance(exc, httpx.TimeoutException):
        what = "read timeout while streaming" if streaming else "timeout before the response started"
        return LLMTimeoutError(f"{what} ({detail})", provider=provider, request_id=request_id)
    if isinstance(exc, httpx.DecodingError):
        return MalformedResponseError(
            f"the response body could not be decoded ({detail})", provider=provider, request_id=request_id
        )
    if streaming and isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
        return TruncatedStreamError(
            f"the connection closed before the stream finished ({detail})",
            provider=provider,
            request_id=request_id,
        )
    return LLMConnectionError(f"connection error ({detail})", provider=provider, request_id=request_id)


def check_header_values(headers: Mapping[str, str], *, provider: str) -> None:
    """Raise :class:`LLMError` when a header name or value is not ASCII (httpx would fail on it).

    A key pasted with a typographic character or a non-breaking space is the usual cause.  The error names the
    header and the position of the first offending character, never the value.
    """
    for name, value in headers.items():
        if not name.isascii():
            raise LLMError(f"a header name contains non-ASCII characters: {name!r}", provider=provider)
        if not value.isascii():
            position = next(i for i, char in enumerate(value) if not char.isascii())
            raise LLMError(
                f"the {name!r} header (API key or extra_headers) has a non-ASCII character at position "
                f"{position}; header values must be ASCII (look for a pasted typographic character or a "
                "non-breaking space in the key)",
                provider=provider,
            )


def _build_request(
    client: httpx.AsyncClient,
    url: str,
    content: bytes,
    headers: Mapping[str, str],
    timeout: httpx.Timeout,
    provider: str,
    secrets: Iterable[str],
) -> httpx.Request:
    try:
        request = client.build_request(
            "POST",
            url,
            content=content,
            headers={**headers, "content-type": "application/json", "accept": "text/event-stream"},
            timeout=timeout,
        )
    except (UnicodeError, httpx.InvalidURL) as exc:
        # UnicodeError carries the whole offending string (it may be the key): keep only its type.
        problem = (
            type(exc).__name__
            if isinstance(exc, UnicodeError)
            else redact_text(f"{type(exc).__name__}: {exc}", secrets)
        )
    else:
        port = request.url.port
        if port is None or 0 < port < 65536:
            return request
        problem = f"port {port} of base_url is out of range"
    raise LLMError(
        f"the request could not be built ({problem}); check base_url and headers", provider=provider
    )


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient,
    url: str,
    *,
    headers: Mapping[str, str],
    body: Mapping[str, Any],
    timeout: httpx.Timeout,
    retry: RetryPolicy,
    provider: str,
    secrets: Iterable[str] = (),
    limits: RequestLimits | None = None,
) -> AsyncIterator[httpx.Response]:
    """POST *body* as JSON and yield the successful streaming response.

    Connection errors, timeouts and retryable statuses (see :func:`should_retry_status`) are retried per
    *retry* before the response starts; a non-retryable or last failure raises the typed :class:`LLMError`.
    Once a 2xx response is yielded nothing is retried.  The response is closed on exit, also on cancellation,
    which closes the connection when the body was not read to the end.

    With *limits*, every attempt first waits for its rate-limit leases and holds them until the response is
    closed; a 429/503/529 with ``retry-after`` pauses the keys, and the retry then waits in the limiter's queue
    (in order, behind the other waiters) instead of sleeping.

    When an exchange hook is active (:data:`miniagents.llms._exchange.active_exchange`, set by a durable run),
    the hook runs the exchange: live (all of the above) or answered from its record (no request is sent).
    """
    secrets = list(secrets)
    check_header_values(headers, provider=provider)
    content = json.dumps(body, ensure_ascii=False).encode("utf-8")
    hook = active_exchange.get()
    if hook is not None:

        def live() -> AbstractAsyncContextManager[httpx.Response]:
            return _open_live(client, url, content, headers, timeout, retry, provider, secrets, limits)

        async with hook.exchange(ExchangeRequest(provider, url, content, tuple(secrets)), live) as response:
            yield response
        return
    async with _open_live(
        client, url, content, headers, timeout, retry, provider, secrets, limits
    ) as response:
        yield response


@asynccontextmanager
async def _open_live(
    client: httpx.AsyncClient,
    url: str,
    content: bytes,
    headers: Mapping[str, str],
    timeout: httpx.Timeout,
    retry: RetryPolicy,
    provider: str,
    secrets: list[str],
    limits: RequestLimits | None,
) -> AsyncIterator[httpx.Response]:
    if limits is not None:
        limits.estimate(len(content))
    retries_done = 0
    while True:
        request = _build_request(client, url, content, headers, timeout, provider, secrets)
        retry_headers: Mapping[str, str] = {}
        response: httpx.Response | None = None
        error: LLMError | None = None
        retryable = False
        paused = False
        async with limits.attempt() if limits is not None else nullcontext():
            try:
                response = await client.send(request, stream=True)
            except httpx.RequestError as exc:
                error = transport_error(exc, provider=provider, streaming=False, secrets=secrets)
                retryable = isinstance(exc, httpx.TransportError) and not isinstance(exc, _NOT_RETRYABLE)
            if response is not None and response.is_success:
                if limits is not None:
                    limits.accepted()
                try:
                    await _check_event_stream(response, provider=provider)
                    yield response
                finally:
                    with anyio.CancelScope(shield=True):
                        await response.aclose()
                return
            if response is not None:
                raw = b""
                unreadable = False
                try:
                    raw = await _read_limited(response)
                except httpx.HTTPError:  # transport or decoding failure: the status still tells what happened
                    unreadable = True
                finally:
                    with anyio.CancelScope(shield=True):
                        await response.aclose()
                error = build_status_error(response.status_code, response.headers, raw, provider=provider)
                if unreadable and not raw:
                    error.message += " (the error body could not be read)"
                retry_headers = response.headers
                retryable = should_retry_status(response.status_code, response.headers, error_code=error.code)
            if limits is not None:
                paused = limits.rejected(
                    response.status_code if response is not None else None, retry_headers
                )
        assert error is not None
        # Raised outside the except blocks above: the httpx exception (and its request) is not the context.
        if not retryable or retries_done >= retry.max_retries:
            raise error
        delay = retry.delay(retries_done, retry_headers)
        retries_done += 1
        logger.info(
            "%s request failed (%s); retry %d of %d in %.2f s%s",
            provider,
            type(error).__name__,
            retries_done,
            retry.max_retries,
            delay,
            " (every request on its rate-limit key waits as long)" if paused else "",
        )
        if not paused:
            await anyio.sleep(delay)


async def _check_event_stream(response: httpx.Response, *, provider: str) -> None:
    """Raise :class:`MalformedResponseError` (with the start of the body) for a 2xx that is not an event stream.

    A missing ``content-type`` is tolerated: the stream is then parsed as SSE and judged by its start and its
    events (an HTML or JSON body, or one with no event at all, is malformed too; see the LLM loop).
    """
    content_type = response.headers.get("content-type")
    if content_type is None or content_type.split(";")[0].strip().lower() == "text/event-stream":
        return
    raw = b""
    with suppress(httpx.HTTPError):
        raw = await _read_limited(response)
    snippet = raw[:500].decode("utf-8", errors="replace")
    raise MalformedResponseError(
        f"expected an event stream (text/event-stream) but the server answered HTTP {response.status_code} "
        f"with content-type {content_type!r}: {snippet!r}",
        status=response.status_code,
        request_id=request_id_of(response.headers),
        provider=provider,
        body=snippet,
    )


async def _read_limited(response: httpx.Response) -> bytes:
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= _MAX_ERROR_BODY:
            break
    return bytes(data)
