"""The LLM layer's exchange hook: a durable run records and replays each HTTP exchange.  No DBOS here.

The LLM layer does not import the durable plug-in; ``miniagents.durable`` sets :data:`active_exchange` in the
task of every call it runs as a workflow, so the agent function, its child tasks and the LLM requests they make
see it.  :func:`~miniagents.llms._http.open_stream` hands every exchange (retries and rate-limit waits
included) to the hook when one is set; the hook either runs it live (``live()``, whose response it may tee with
:func:`tee_response`) or answers it with a recorded response (:func:`replayed_response`), which the adapter
parses exactly as it parsed the live one, so the messages (and their hash keys) are the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from typing import Protocol

import attrs
import httpx

__all__ = [
    "KEPT_HEADERS",
    "ExchangeHook",
    "ExchangeRequest",
    "RecordedResponse",
    "Tee",
    "active_exchange",
    "replayed_response",
    "tee_response",
]

#: The response headers a recorded response keeps (what the adapters read after a 2xx): never an auth header.
KEPT_HEADERS = ("content-type", "content-encoding", "x-request-id", "request-id")


@attrs.frozen
class ExchangeRequest:
    """What identifies one exchange: provider, URL and the JSON body bytes (never the headers: they hold keys).

    ``secrets`` are the request's secrets (its API key, the values of its secret-named headers and query
    parameters), for a hook to redact from whatever it records of a failure; they are not part of the digest,
    the ``repr`` or equality, and a hook must never record them.
    """

    provider: str
    url: str
    content: bytes
    secrets: tuple[str, ...] = attrs.field(default=(), repr=False, eq=False)

    @property
    def digest(self) -> str:
        """SHA-256 of URL and body: a replay checks that the recorded response answered the same request."""
        hasher = hashlib.sha256(self.url.encode("utf-8"))
        hasher.update(b"\0")
        hasher.update(self.content)
        return hasher.hexdigest()


@attrs.frozen
class RecordedResponse:
    """A finished 2xx response as recorded: status, the :data:`KEPT_HEADERS` it had, its raw body bytes."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


class ExchangeHook(Protocol):
    """What a durable run offers the LLM layer: it runs (or replays) each exchange of the current call."""

    def exchange(
        self,
        request: ExchangeRequest,
        live: Callable[[], AbstractAsyncContextManager[httpx.Response]],
    ) -> AbstractAsyncContextManager[httpx.Response]:
        """Yield the response to *request*: the live one of ``live()``, or a replayed one.

        The hook sees how the block is left: normally, with an :class:`~miniagents.llms.LLMError` of the
        exchange (``miniagents.durable`` records it, and a replay raises an equal one), or with a cancellation
        or another exception (recorded nothing: the exchange is run live again).
        """


#: The exchange hook of the current call (set by ``miniagents.durable`` in the call's task), ``None`` when off.
active_exchange: ContextVar[ExchangeHook | None] = ContextVar("miniagents_active_exchange", default=None)


class _TeeStream(httpx.AsyncByteStream):
    """The raw byte stream of a live response, copying every chunk as the adapter reads it."""

    def __init__(self, inner: httpx.AsyncByteStream, sink: bytearray) -> None:
        self._inner = inner
        self._sink = sink

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._sink += chunk
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


@attrs.define
class Tee:
    """The copy of a live response's raw body, kept while the adapter reads it (see :func:`tee_response`)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytearray = attrs.field(factory=bytearray)

    def recorded(self) -> RecordedResponse:
        """The response as read so far (the adapter reads a successful stream to its end)."""
        return RecordedResponse(self.status, self.headers, bytes(self.body))


def tee_response(response: httpx.Response) -> Tee:
    """Start copying *response*'s raw (still encoded) body as it is read; call before the first read."""
    kept = tuple((name, response.headers[name]) for name in KEPT_HEADERS if name in response.headers)
    tee = Tee(response.status_code, kept)
    stream = response.stream
    if not isinstance(stream, httpx.AsyncByteStream):  # pragma: no cover - httpx's async client always is
        raise TypeError("tee_response() needs the response of an async client")
    response.stream = _TeeStream(stream, tee.body)
    return tee


def replayed_response(recorded: RecordedResponse, request: ExchangeRequest) -> httpx.Response:
    """A response that reads like the recorded one (same status, kept headers and raw body)."""
    headers: Iterable[tuple[str, str]] = recorded.headers
    return httpx.Response(
        recorded.status,
        headers=list(headers),
        stream=httpx.ByteStream(recorded.body),
        request=httpx.Request("POST", request.url),
    )
