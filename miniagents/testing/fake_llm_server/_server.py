"""The HTTP side of the fake server: :class:`FakeLLMServer`.

It listens, routes by path, validates, picks the queued response, writes its bytes and notices disconnects.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Literal

import anyio
import anyio.abc
import attrs
import h11

from miniagents.testing.fake_llm_server._anthropic import anthropic_error
from miniagents.testing.fake_llm_server._openai import openai_error
from miniagents.testing.fake_llm_server._recorded import RecordedRequest
from miniagents.testing.fake_llm_server._script import SSE, Gate, Hang, Pause, Raw, ScriptedResponse
from miniagents.testing.fake_llm_server._validation import _validate

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup


Handler = Callable[[RecordedRequest], ScriptedResponse]


@attrs.frozen
class _Queued:
    response: ScriptedResponse
    path: str | None


class FakeLLMServer:
    """A scripted fake of the OpenAI and Anthropic streaming APIs on ``127.0.0.1``.

    Use :meth:`serve` to run it for the duration of an ``async with`` block.  It routes by path:
    ``…/chat/completions`` is OpenAI, ``…/responses`` the OpenAI Responses API, ``…/messages`` is Anthropic
    (so both ``base_url`` styles work); anything else gets a 404.

    Attributes:
        requests: every request received, in arrival order.
        handler: called for a request when no queued response matches it.
        expected_api_key: when set, requests with another key get the provider's 401.
        validate: check requests the way the real APIs do.
        errors: unexpected exceptions raised while serving (re-raised when :meth:`serve` exits).

    """

    def __init__(self, *, validate: bool = True, expected_api_key: str | None = None) -> None:
        self.requests: list[RecordedRequest] = []
        self.handler: Handler | None = None
        self.expected_api_key = expected_api_key
        self.validate = validate
        self.errors: list[BaseException] = []
        self._queue: list[_Queued] = []
        self._port: int | None = None
        self._request_arrived = anyio.Event()

    # -- lifecycle ---------------------------------------------------------------------------------------------
    @classmethod
    @asynccontextmanager
    async def serve(
        cls,
        *,
        validate: bool = True,
        expected_api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> AsyncIterator[FakeLLMServer]:
        """Listen on *host*:*port* (0: a free port) and serve until the block exits.

        The server is shut down (listener closed, connections cancelled) however the block exits.  An
        exception raised in the block is re-raised as itself, not wrapped in an exception group, so
        ``pytest.raises(ValueError)`` around the block catches a ``ValueError`` raised in it; a cancellation
        of the block propagates unchanged.

        Raises:
            Exception: the first unexpected exception of the server itself (a bug of the fake, not a scripted
                failure; the others are in :attr:`errors`), when the block exited normally.
            BaseExceptionGroup: the block's exception and the server's, when both failed.

        """
        server = cls(validate=validate, expected_api_key=expected_api_key)
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        server._port = listener.extra(anyio.abc.SocketAttribute.local_port)
        body_error: BaseException | None = None
        try:
            async with listener, anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, server._serve_connection)
                try:
                    yield server
                except (anyio.get_cancelled_exc_class(), GeneratorExit):
                    raise  # the task group needs a cancellation to end it at the right scope
                except BaseException as exc:
                    # Kept out of the task group (which would wrap it in an ExceptionGroup); raised below.
                    body_error = exc
                finally:
                    tg.cancel_scope.cancel()
        except BaseException as exit_error:
            if body_error is None:
                raise
            raise BaseExceptionGroup("errors on exit", [body_error, exit_error]) from None
        if body_error is not None:
            if server.errors:
                raise BaseExceptionGroup("errors on exit", [body_error, *server.errors]) from None
            raise body_error
        if server.errors:
            raise server.errors[0]

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._port is None:
            raise RuntimeError("the server is not running; use `async with FakeLLMServer.serve() as server`")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """The ``base_url`` for :func:`~miniagents.llms.openai_agent` (``…/v1``)."""
        return f"{self.base_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """The ``base_url`` for :func:`~miniagents.llms.anthropic_agent`."""
        return self.base_url

    # -- scripting ---------------------------------------------------------------------------------------------
    def enqueue(self, *responses: ScriptedResponse, path: str | None = None) -> FakeLLMServer:
        """Queue responses, answered in order; with *path*, only to requests whose path ends with it."""
        self._queue.extend(_Queued(response, path) for response in responses)
        return self

    @property
    def pending(self) -> int:
        """How many queued responses were not used yet."""
        return len(self._queue)

    async def wait_for_requests(self, count: int) -> None:
        """Wait until at least *count* requests arrived."""
        while len(self.requests) < count:
            await self._request_arrived.wait()

    def _choose(self, request: RecordedRequest) -> ScriptedResponse:
        path = request.path.split("?", 1)[0]
        for n, queued in enumerate(self._queue):
            if queued.path is None or path.endswith(queued.path):
                del self._queue[n]
                return queued.response
        if self.handler is not None:
            return self.handler(request)
        return _error_for(
            _provider_of(path),
            500,
            "FakeLLMServer: no scripted response left for this request",
            "fake_server_error",
        )

    # -- HTTP ----------------------------------------------------------------------------------------------------
    async def _serve_connection(self, stream: anyio.abc.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            async with stream:
                while True:
                    request = await self._read_request(conn, stream)
                    if request is None:
                        return
                    keep_open = await self._respond(conn, stream, request)
                    if not keep_open or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, ConnectionError):
            return
        except h11.RemoteProtocolError:
            return
        except Exception as exc:  # a bug of the fake server: surface it when serve() exits
            self.errors.append(exc)

    async def _read_request(
        self, conn: h11.Connection, stream: anyio.abc.SocketStream
    ) -> RecordedRequest | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                    data = b""
                conn.receive_data(data)
                if not data and head is None:
                    return None
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                request = RecordedRequest(
                    index=len(self.requests),
                    method=head.method.decode("ascii"),
                    path=head.target.decode("ascii", errors="replace"),
                    headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers},
                    body=bytes(body),
                )
                self.requests.append(request)
                self._request_arrived.set()
                self._request_arrived = anyio.Event()
                return request
            elif isinstance(event, h11.ConnectionClosed):
                return None
            # h11.PAUSED cannot happen here: a new cycle starts only after the response.

    async def _respond(
        self, conn: h11.Connection, stream: anyio.abc.SocketStream, request: RecordedRequest
    ) -> bool:
        path = request.path.split("?", 1)[0]
        provider = _provider_of(path)
        problem: tuple[int, str, str] | None = None
        if provider is None or request.method != "POST":
            problem = (404, f"FakeLLMServer: unknown route {request.method} {path}", "not_found_error")
        elif self.validate or self.expected_api_key is not None:
            problem = _validate(provider, request, self.expected_api_key, check_body=self.validate)
        if problem is not None:
            request.validation_error = problem[1]
            response = _error_for(provider, *problem)
        else:
            response = self._choose(request)
        request.response = response
        try:
            return await self._send(conn, stream, request, response)
        finally:
            request._finished.set()

    async def _send(
        self,
        conn: h11.Connection,
        stream: anyio.abc.SocketStream,
        request: RecordedRequest,
        response: ScriptedResponse,
    ) -> bool:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        if response.default_content_type and all(k.lower() != "content-type" for k, _ in response.headers):
            headers.append((b"content-type", b"application/octet-stream"))
        static = all(isinstance(step, (bytes, Raw, SSE)) for step in response.body)
        if static and response.end == "complete":
            payload = response.body_bytes()
            headers.append((b"content-length", str(len(payload)).encode()))
        headers.append((b"date", b"Thu, 01 Jan 2026 00:00:00 GMT"))
        headers.append((b"server", b"miniagents-fake-llm"))
        completed = False
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_disconnect, conn, stream, request, tg.cancel_scope)
            try:
                await self._run_wait(response.before_headers)
                await self._write(
                    stream,
                    conn.send(h11.Response(status_code=response.status, headers=headers)),
                    response.chunk_size,
                )
                for step in response.body:
                    if isinstance(step, (Pause, Hang, Gate)):
                        await self._run_wait(step)
                    else:
                        data = response._encoded(step)
                        if data:
                            await self._write(stream, conn.send(h11.Data(data=data)), response.chunk_size)
                if response.end == "complete":
                    await self._write(stream, conn.send(h11.EndOfMessage()), None)
                    completed = True
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
                request._disconnected.set()
            tg.cancel_scope.cancel()
        request.response_complete = completed
        return completed and not request.disconnected

    @staticmethod
    async def _run_wait(step: Pause | Hang | Gate | None) -> None:
        if isinstance(step, Pause):
            await anyio.sleep(step.seconds)
        elif isinstance(step, Hang):
            await anyio.sleep_forever()
        elif isinstance(step, Gate):
            await step.wait()

    @staticmethod
    async def _write(stream: anyio.abc.SocketStream, data: bytes | None, chunk_size: int | None) -> None:
        if not data:
            return
        if chunk_size is None:
            await stream.send(data)
            return
        for start in range(0, len(data), chunk_size):
            await stream.send(data[start : start + chunk_size])

    @staticmethod
    async def _watch_disconnect(
        conn: h11.Connection,
        stream: anyio.abc.SocketStream,
        request: RecordedRequest,
        scope: anyio.CancelScope,
    ) -> None:
        # Reads while the response is being written: EOF means the client went away.  Bytes of a pipelined next
        # request are handed to h11, which buffers them for the next cycle.
        while True:
            try:
                data = await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
                request._disconnected.set()
                scope.cancel()
                return
            conn.receive_data(data)


def _provider_of(path: str) -> Literal["openai", "openai_responses", "anthropic"] | None:
    if path.endswith("/chat/completions"):
        return "openai"
    if path.endswith("/responses"):
        return "openai_responses"
    if path.endswith("/messages"):
        return "anthropic"
    return None


def _error_for(provider: str | None, status: int, message: str, error_type: str) -> ScriptedResponse:
    if provider == "anthropic":
        return anthropic_error(status, message, type=error_type)
    return openai_error(status, message, type=error_type)
