"""ASGI pieces: a streaming response that ends the call with the connection, and a context middleware.

Plain ASGI (``scope, receive, send``), so they work with Starlette, FastAPI, Quart, Litestar or a bare ASGI
server (uvicorn on asyncio, hypercorn on trio or asyncio) without depending on any of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from contextlib import aclosing
from typing import Any

import anyio

from miniagents._context import MiniAgents
from miniagents._sequence import MessageSequencePromise
from miniagents.asgi._events import ErrorPayload, error_payload, reply_events

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_DEFAULT_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # proxies such as nginx must not hold the stream back
)


class EventStreamResponse:
    """An ASGI application streaming a call's replies as Server-Sent Events; the call lives as long as it.

    Return it from a handler (``return EventStreamResponse(agent.inquire(question))``): the events are those
    of :func:`~miniagents.asgi.reply_events` (``token``, ``message``, then ``done`` or ``error``), so an agent
    that fails mid-stream ends the response with an ``error`` event instead of a broken chunked body.

    The replies are read inside ``async with replies:``, so the call ends with the response: when the client
    disconnects (ASGI ``http.disconnect``, or a write to a closed connection) or the server cancels the
    request, the call is cancelled, its LLM streams are closed, and the response returns once it has ended.
    What the call completed before that stays in its reply sequence (and in the context's store).

    Args:
        replies: the replies to stream, normally straight from ``agent.inquire(...)``.
        status_code: the HTTP status (the response starts before the first reply is known).
        headers: extra response headers; one named like a default (``content-type``, ``cache-control``,
            ``x-accel-buffering``) replaces it.
        tokens: send ``token`` events (``False``: only whole messages).
        on_error: builds the ``error`` event's JSON object from the error (default :func:`error_payload`: its
            type and a fixed message, the error itself being logged; :func:`error_details` adds its message).
        ping_interval: seconds of silence after which a ``: ping`` comment keeps proxies from closing the
            connection (``None``: never).

    """

    def __init__(
        self,
        replies: MessageSequencePromise,
        *,
        status_code: int = 200,
        headers: Iterable[tuple[str, str]] = (),
        tokens: bool = True,
        on_error: ErrorPayload = error_payload,
        ping_interval: float | None = 15.0,
    ) -> None:
        if not isinstance(replies, MessageSequencePromise):
            raise TypeError(
                f"EventStreamResponse needs a MessageSequencePromise (e.g. agent.inquire(...)), got "
                f"{type(replies).__name__}"
            )
        if ping_interval is not None and ping_interval <= 0:
            raise ValueError(f"ping_interval must be positive or None, got {ping_interval!r}")
        self.replies = replies
        self.status_code = status_code
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        overridden = {name for name, _ in extra}
        self.headers = [*(h for h in _DEFAULT_HEADERS if h[0] not in overridden), *extra]
        self.tokens = tokens
        self.on_error = on_error
        self.ping_interval = ping_interval

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise TypeError(f"EventStreamResponse serves HTTP requests, not {scope['type']!r}")
        lock = anyio.Lock()  # the events and the pings share one connection
        last_write = anyio.current_time()
        finished = False  # the last body message was sent: ASGI allows nothing after it

        async def write(body: bytes, *, more: bool = True) -> None:
            nonlocal last_write, finished
            async with lock:
                if finished:
                    return
                finished = not more
                await send({"type": "http.response.body", "body": body, "more_body": more})
                last_write = anyio.current_time()

        async def ping(interval: float) -> None:
            try:
                while True:
                    await anyio.sleep(max(0.0, last_write + interval - anyio.current_time()))
                    if anyio.current_time() - last_write >= interval:
                        await write(b": ping\n\n")
            except OSError:
                tg.cancel_scope.cancel()  # the client went away: as a disconnect, this ends the call

        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_on_disconnect, receive, tg.cancel_scope)
            async with self.replies:  # leaving it (disconnect, cancellation) cancels and awaits the call
                try:
                    await send(
                        {"type": "http.response.start", "status": self.status_code, "headers": self.headers}
                    )
                    if self.ping_interval is not None:
                        tg.start_soon(ping, self.ping_interval)
                    events = reply_events(self.replies, tokens=self.tokens, on_error=self.on_error)
                    async with aclosing(events):
                        async for event in events:
                            await write(event.encode())
                    await write(b"", more=False)
                except OSError:
                    pass  # the client went away while we wrote: the block's exit cancels the call
            tg.cancel_scope.cancel()  # the response is complete: stop the disconnect watcher and the pings


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


class MiniAgentsMiddleware:
    """ASGI middleware that runs every request attached to *context* (see :meth:`MiniAgents.attach`).

    Enter the context in the application's lifespan and add the middleware, e.g. with Starlette::

        ma = MiniAgents(store=SQLiteStore("app.db"))

        @contextlib.asynccontextmanager
        async def lifespan(app):
            async with ma:
                yield

        app = Starlette(routes=..., lifespan=lifespan, middleware=[Middleware(MiniAgentsMiddleware, context=ma)])

    Handlers then call agents directly.  Lifespan events pass through untouched (the context is not active
    before the lifespan enters it).
    """

    def __init__(self, app: ASGIApp, *, context: MiniAgents) -> None:
        if not isinstance(context, MiniAgents):
            raise TypeError(
                f"MiniAgentsMiddleware needs context=MiniAgents(...), got {type(context).__name__}"
            )
        self.app = app
        self.context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        async with self.context.attach():
            await self.app(scope, receive, send)
