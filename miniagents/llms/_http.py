"""HTTP plumbing shared by the providers: the pooled client, retries, and error mapping."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx

from miniagents.llms._exceptions import (
    APIStatusError,
    LLMConnectionError,
    LLMError,
    LLMTimeoutError,
    TruncatedStreamError,
    error_class_for,
)
from miniagents.llms._retry import RetryPolicy, should_retry_status

__all__ = [
    "DEFAULT_TIMEOUT",
    "HTTP_CLIENT_RESOURCE_KEY",
    "build_status_error",
    "make_timeout",
    "open_stream",
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


def _new_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=DEFAULT_TIMEOUT,
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
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


def build_status_error(
    status: int | None, headers: Mapping[str, str], raw: bytes, *, provider: str
) -> APIStatusError:
    """Build the typed error for an error response (or a mid-stream error event when *status* is ``None``)."""
    body, message, error_type, code, body_request_id = _parse_error_body(raw)
    if not message:
        message = f"HTTP {status}" if status is not None else "error event in the stream"
    cls = error_class_for(status, error_type, code, message)
    return cls(
        message,
        status=status,
        error_type=error_type,
        code=code,
        request_id=request_id_of(headers) or body_request_id,
        provider=provider,
        body=body,
    )


def redact(text: str, secrets: Iterable[str]) -> str:
    """Return *text* with every non-trivial secret (and its ``repr`` form) replaced by ``***``."""
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "***").replace(repr(secret)[1:-1], "***")
    return text


def transport_error(
    exc: Exception,
    *,
    provider: str,
    streaming: bool,
    request_id: str | None = None,
    secrets: Iterable[str] = (),
) -> LLMError:
    """Translate an ``httpx`` transport exception; the original is not chained (it holds the request).

    The exception text is kept with *secrets* redacted (httpx quotes illegal header values verbatim).
    """
    detail = redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, secrets)
    if isinstance(exc, httpx.TimeoutException):
        what = "read timeout while streaming" if streaming else "timeout before the response started"
        return LLMTimeoutError(f"{what} ({detail})", provider=provider, request_id=request_id)
    if streaming and isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
        return TruncatedStreamError(
            f"the connection closed before the stream finished ({detail})",
            provider=provider,
            request_id=request_id,
        )
    return LLMConnectionError(f"connection error ({detail})", provider=provider, request_id=request_id)


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
) -> AsyncIterator[httpx.Response]:
    """POST *body* as JSON and yield the successful streaming response.

    Connection errors, timeouts and retryable statuses (see :func:`should_retry_status`) are retried per
    *retry* before the response starts; a non-retryable or last failure raises the typed :class:`LLMError`.
    Once a 2xx response is yielded nothing is retried.  The response is closed on exit, also on cancellation,
    which closes the connection when the body was not read to the end.
    """
    content = json.dumps(body, ensure_ascii=False).encode("utf-8")
    retries_done = 0
    while True:
        request = client.build_request(
            "POST",
            url,
            content=content,
            headers={**headers, "content-type": "application/json", "accept": "text/event-stream"},
            timeout=timeout,
        )
        retry_headers: Mapping[str, str] = {}
        try:
            response = await client.send(request, stream=True)
        except httpx.TransportError as exc:
            error: LLMError = transport_error(exc, provider=provider, streaming=False, secrets=secrets)
            retryable = not isinstance(exc, _NOT_RETRYABLE)
        else:
            if response.is_success:
                try:
                    yield response
                finally:
                    with anyio.CancelScope(shield=True):
                        await response.aclose()
                return
            try:
                raw = await _read_limited(response)
            except httpx.TransportError:
                raw = b""
            finally:
                with anyio.CancelScope(shield=True):
                    await response.aclose()
            error = build_status_error(response.status_code, response.headers, raw, provider=provider)
            retry_headers = response.headers
            retryable = should_retry_status(response.status_code, response.headers, error_code=error.code)
        if not retryable or retries_done >= retry.max_retries:
            raise error
        delay = retry.delay(retries_done, retry_headers)
        retries_done += 1
        logger.info(
            "%s request failed (%s); retry %d of %d in %.2f s",
            provider,
            type(error).__name__,
            retries_done,
            retry.max_retries,
            delay,
        )
        await anyio.sleep(delay)


async def _read_limited(response: httpx.Response) -> bytes:
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= _MAX_ERROR_BODY:
            break
    return bytes(data)
