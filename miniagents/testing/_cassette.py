"""Record LLM exchanges to a cassette and replay them offline through :class:`FakeLLMServer`.

While a :class:`Cassette` is active, every ``POST`` whose path ends with an LLM route (``/chat/completions``,
``/messages``, ``/responses``) made by any ``httpx.AsyncClient`` that uses the standard ``httpx.AsyncHTTPTransport`` is
intercepted at the transport: the pooled client of the ``MiniAgents`` context, an explicit ``http_client=``
option and ``local_agent``'s client alike.  Other requests pass through untouched.  Recording tees the real
response: the LLM agent sees the real bytes while they are stored.  Replay sends the request, over real HTTP, to a
:class:`FakeLLMServer` on ``127.0.0.1`` that serves the recorded bytes, so the agents' SSE parsing, error mapping
and retries run as they do against the provider.  A client built on a custom transport (``httpx.MockTransport``
...) is not intercepted.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, ExitStack
from pathlib import Path
from types import TracebackType
from typing import Literal, cast

import anyio
import anyio.from_thread
import attrs
import httpx

from miniagents.testing._cassette_format import (
    KEPT_RESPONSE_HEADERS,
    CassetteError,
    CassetteMismatchError,
    Exchange,
    Normaliser,
    RequestKey,
    dump_cassette,
    load_cassette,
    mismatch_report,
    redact_bytes,
    redact_text,
    secrets_of,
)
from miniagents.testing.fake_llm_server import (
    FakeLLMServer,
    Hang,
    Pause,
    Raw,
    RecordedRequest,
    ScriptedResponse,
    anthropic_error,
    openai_error,
)

__all__ = ["CASSETTE_MODE_ENV", "Cassette", "CassetteMode", "CassetteStatistics"]

CassetteMode = Literal["auto", "replay", "record", "record-missing", "off"]
_MODES: tuple[str, ...] = ("auto", "replay", "record", "record-missing", "off")
#: The environment variable that sets the mode of cassettes created without an explicit ``mode``.
CASSETTE_MODE_ENV = "MINIAGENTS_CASSETTE_MODE"
#: The request header that tells the replay server which recorded exchange to serve.
ENTRY_HEADER = "x-miniagents-cassette-entry"
DEFAULT_ROUTES = ("/chat/completions", "/messages", "/responses")

_Handle = Callable[[httpx.AsyncHTTPTransport, httpx.Request], Awaitable[httpx.Response]]
_active: list[Cassette] = []
_active_lock = threading.Lock()
#: The transport's method as it was when the first cassette became active (instrumentation installed after this
#: module was imported, e.g. OpenTelemetry's, included): every request that is sent for real goes through it.
_original_handle: _Handle = httpx.AsyncHTTPTransport.handle_async_request


async def _intercepting_handle(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
    cassette = _active[-1] if _active else None
    if cassette is None or not cassette._intercepts(request):
        return await _original_handle(self, request)
    return await cassette._handle(self, request)


@attrs.frozen
class CassetteStatistics:
    """What a cassette did (see :meth:`Cassette.statistics`).

    Attributes:
        mode: the mode in effect (``"auto"`` resolved to ``"replay"`` or ``"record"``).
        loaded: exchanges read from the file.
        replayed: requests answered from the cassette.
        recorded: exchanges recorded in this activation.
        unmatched: requests that had no recorded exchange (each one is an error).
        unused: loaded exchanges that were not replayed.

    """

    mode: str
    loaded: int
    replayed: int
    recorded: int
    unmatched: int
    unused: int


# Splits a body after every blank line (the end of an SSE event), whatever the line endings.
_EVENT_END = re.compile(rb"(?<=\n\n)|(?<=\r\n\r\n)|(?<=\r\r)(?!\n)")


@attrs.define(eq=False)
class _Recording:
    key: RequestKey
    secrets: tuple[str, ...]
    started: float
    status: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    latency: float = 0.0
    chunks: list[bytes] = attrs.field(factory=list)
    delays: list[float] = attrs.field(factory=list)
    end: Literal["complete", "abort", "cancelled"] | None = None

    def exchange(self, timing: bool, exact_chunks: bool) -> Exchange | None:
        if self.end is None or (self.status is None and self.end != "cancelled"):
            return None
        chunks = [redact_bytes(chunk, self.secrets) for chunk in self.chunks]
        joined = b"".join(chunks)
        delays = list(self.delays)
        if redact_bytes(joined, self.secrets) != joined:  # a secret split across chunks: store one chunk
            joined = redact_bytes(joined, self.secrets)
            chunks, delays = [joined], [sum(self.delays)]
        if not exact_chunks and not timing:
            # The network's chunk boundaries change from run to run: store one chunk per SSE event instead.
            chunks = [piece for piece in _EVENT_END.split(joined) if piece]
        return Exchange(
            request=self.key,
            status=self.status,
            headers=self.headers,
            chunks=tuple(chunks),
            end=self.end,
            latency=round(self.latency, 3) if timing else None,
            delays=tuple(round(d, 3) for d in delays) if timing else None,
        )


class _TeeStream(httpx.AsyncByteStream):
    """The real response body, stored chunk by chunk (with the time before each) as the client reads it."""

    def __init__(self, inner: httpx.AsyncByteStream, recording: _Recording) -> None:
        self._inner = inner
        self._recording = recording

    async def __aiter__(self) -> AsyncIterator[bytes]:
        recording = self._recording
        last = time.monotonic()
        try:
            async for chunk in self._inner:
                now = time.monotonic()
                recording.chunks.append(bytes(chunk))
                recording.delays.append(now - last)
                last = now
                yield chunk
        except Exception:
            recording.end = "abort"
            raise
        recording.end = "complete"

    async def aclose(self) -> None:
        if self._recording.end is None:  # the client stopped reading before the end (e.g. it was cancelled)
            self._recording.end = "cancelled"
        await self._inner.aclose()


class Cassette:
    """Record the LLM exchanges of a block to a file, or replay them from it offline.

    Use it as ``with Cassette(path):`` (the replay server runs in a thread: works around ``MiniAgents().run()``
    and in any async test) or ``async with Cassette(path):`` (the replay server runs in the current event loop).
    Everything inside the block, including agent calls of ``MiniAgents`` contexts opened inside it, is recorded
    or replayed; start and finish those contexts inside the block.  One cassette is in effect at a time: when
    cassettes nest, the innermost one is used.

    Args:
        path: the cassette file (JSON lines, see :mod:`miniagents.testing._cassette_format`).
        mode: ``"replay"`` (serve recorded exchanges; a request without one fails), ``"record"`` (call the real
            provider, overwrite the file on success), ``"record-missing"`` (replay what the file has, record the
            rest and append it), ``"auto"`` (replay when the file exists, else record), ``"off"`` (do nothing).
            Default: the ``MINIAGENTS_CASSETTE_MODE`` environment variable, else ``"auto"``.
        timing: replay ``"fast"`` (no waiting) or with the ``"original"`` latency and inter-chunk delays (when
            they were recorded).
        record_timing: store the latency and the delay before each chunk (they change with every recording);
            implies *exact_chunks*.
        exact_chunks: store the body in the chunks the network delivered (their boundaries change with every
            recording); by default it is stored as one chunk per SSE event (the same bytes, regrouped), so that
            re-recording the same exchanges gives the same file.
        ignore_fields: dotted paths of request-body fields that vary between runs (``"metadata.user_id"``,
            ``"messages.*.id"``); they are stored and matched as ``"<ignored>"``.
        normalise: a function applied to every parsed request body before it is stored or matched.
        routes: path suffixes of the requests to intercept.

    Matching: a request is served the first not yet replayed exchange with the same method, path (query
    included) and normalised body, so repeated identical requests get their recordings in recorded order.  A
    request without one is answered ``404`` with a message holding a diff against the closest recorded request
    (the agent raises it as :class:`~miniagents.llms.NotFoundError`), and the cassette raises
    :class:`CassetteMismatchError` with the same diffs when the block exits (or adds them as a note to the
    block's own exception).  The file is written only when the block succeeds, and left untouched when the new
    recording has the same lines.  No API key or auth header is ever written (see the format module).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        mode: CassetteMode | None = None,
        timing: Literal["fast", "original"] = "fast",
        record_timing: bool = False,
        exact_chunks: bool = False,
        ignore_fields: Sequence[str] = (),
        normalise: Normaliser | None = None,
        routes: Sequence[str] = DEFAULT_ROUTES,
    ) -> None:
        requested = mode if mode is not None else os.environ.get(CASSETTE_MODE_ENV) or "auto"
        if requested not in _MODES:
            source = "mode" if mode is not None else CASSETTE_MODE_ENV
            raise ValueError(f"{source} must be one of {', '.join(_MODES)}; got {requested!r}")
        if timing not in ("fast", "original"):
            raise ValueError(f"timing must be 'fast' or 'original', got {timing!r}")
        self.path = Path(path)
        self.mode: CassetteMode = cast(CassetteMode, requested)
        self.timing = timing
        self.record_timing = record_timing
        self.exact_chunks = exact_chunks or record_timing
        self.ignore_fields = tuple(ignore_fields)
        self.normalise = normalise
        self.routes = tuple(routes)
        #: The mode in effect while active (``"auto"`` resolved); ``None`` before the first activation.
        self.active_mode: CassetteMode | None = None
        #: The replay server while active (``None`` when nothing is replayed).
        self.server: FakeLLMServer | None = None
        self._lock = threading.Lock()
        self._loaded: list[Exchange] = []
        self._queues: dict[str, deque[int]] = {}
        self._replayed = 0
        self._recordings: list[_Recording] = []
        self._problems: list[str] = []
        self._stack: ExitStack | None = None
        self._async_server: AbstractAsyncContextManager[FakeLLMServer] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def __enter__(self) -> Cassette:
        replaying = self._prepare()
        stack = ExitStack()
        try:
            if replaying:
                portal = stack.enter_context(anyio.from_thread.start_blocking_portal())
                server_cm: AbstractContextManager[FakeLLMServer] = portal.wrap_async_context_manager(
                    FakeLLMServer.serve(validate=False)
                )
                self._start_serving(stack.enter_context(server_cm))
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        self._activate()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close_sync()
        self._finish(exc)

    def _close_sync(self) -> None:
        stack, self._stack = self._stack, None
        try:
            self._deactivate()
        finally:
            if stack is not None:
                stack.close()

    async def __aenter__(self) -> Cassette:
        if self._prepare():
            server_cm = FakeLLMServer.serve(validate=False)
            self._start_serving(await server_cm.__aenter__())
            self._async_server = server_cm
        self._activate()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        server_cm, self._async_server = self._async_server, None
        try:
            self._deactivate()
        finally:
            if server_cm is not None:  # the block's exception is not the server's: it is raised as it is
                await server_cm.__aexit__(None, None, None)
        self._finish(exc)

    def _prepare(self) -> bool:
        """Resolve the mode and load the file; return whether exchanges may be replayed."""
        if self.active_mode is not None and self in _active:
            raise CassetteError(f"cassette {self.path} is already active")
        mode = self.mode
        if mode == "auto":
            mode = "replay" if self.path.exists() else "record"
        if mode == "replay" and not self.path.exists():
            raise CassetteError(
                f"cassette {self.path} does not exist; record it first (mode 'record' or 'auto', "
                f"{CASSETTE_MODE_ENV}=record, or pytest --llm-cassette-mode=record)"
            )
        self.active_mode = mode
        self._loaded = (
            load_cassette(self.path) if mode in ("replay", "record-missing") and self.path.exists() else []
        )
        self._queues = {}
        for index, exchange in enumerate(self._loaded):
            self._queues.setdefault(exchange.request.canonical(), deque()).append(index)
        self._replayed = 0
        self._recordings = []
        self._problems = []
        return mode in ("replay", "record-missing")

    def _start_serving(self, server: FakeLLMServer) -> None:
        server.handler = self._serve
        self.server = server

    def _activate(self) -> None:
        global _original_handle
        if self.active_mode == "off":
            return
        with _active_lock:
            if not _active:
                current = httpx.AsyncHTTPTransport.handle_async_request
                if current is not _intercepting_handle:  # (it is ours when a wrapper of it was removed)
                    _original_handle = current
                httpx.AsyncHTTPTransport.handle_async_request = _intercepting_handle  # type: ignore[method-assign]
            _active.append(self)

    def _deactivate(self) -> None:
        with _active_lock:
            if self in _active:
                _active.remove(self)
            # Restore only our own patch: a wrapper installed on top of it since stays (and passes requests on).
            if not _active and httpx.AsyncHTTPTransport.handle_async_request is _intercepting_handle:
                httpx.AsyncHTTPTransport.handle_async_request = _original_handle  # type: ignore[method-assign,assignment]
        self.server = None

    def _finish(self, exc: BaseException | None, *, save: bool = True) -> None:
        """Raise the mismatches (as a note of *exc* when the block failed); save a recording of a good block."""
        problems = list(self._problems)
        if problems:
            error = CassetteMismatchError(self.path, problems)
            if exc is None:
                raise error
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(str(error))
        elif exc is None and save and self.active_mode in ("record", "record-missing"):
            self._save()

    def _save(self) -> None:
        new = [
            exchange
            for recording in self._recordings
            if (exchange := recording.exchange(self.record_timing, self.exact_chunks)) is not None
        ]
        if self.active_mode == "record-missing":
            if not new:
                return
            exchanges = [*self._loaded, *new]
        else:
            exchanges = new
            if not new and not self.path.exists():
                return  # nothing to record: no file (a later run records again)
        text = dump_cassette(exchanges)
        if self.path.exists():
            try:
                old = self.path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                old = ""
            if sorted(old.split("\n")) == sorted(text.split("\n")):
                return  # the same exchanges (in another order, e.g. of concurrent calls): keep the file as it is
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A temporary file of its own in the same directory, then an atomic rename: two processes re-recording
        # the same cassette at once each replace the file whole (the last one wins), never a half-written file.
        # (Created like mkstemp, exclusively under a random name, but with the umask's permissions, not 0600.)
        while True:
            temporary = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:12]}.tmp")
            try:
                descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:  # pragma: no cover - 48 random bits
                continue
            break
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as file:
                file.write(text)
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    # -- introspection -----------------------------------------------------------------------------------------
    def statistics(self) -> CassetteStatistics:
        """Counts of the current (or last) activation."""
        with self._lock:
            return CassetteStatistics(
                mode=self.active_mode or self.mode,
                loaded=len(self._loaded),
                replayed=self._replayed,
                recorded=sum(1 for r in self._recordings if r.status is not None or r.end == "cancelled"),
                unmatched=len(self._problems),
                unused=sum(len(queue) for queue in self._queues.values()),
            )

    @property
    def problems(self) -> tuple[str, ...]:
        """The mismatch reports so far (each one also raised when the block exits)."""
        with self._lock:
            return tuple(self._problems)

    # -- interception ------------------------------------------------------------------------------------------
    def _intercepts(self, request: httpx.Request) -> bool:
        return request.method == "POST" and request.url.path.endswith(self.routes)

    def _key(self, request: httpx.Request, body: bytes, secrets: Sequence[str]) -> RequestKey:
        target = request.url.raw_path.decode("ascii", errors="replace")
        return RequestKey.build(
            request.method,
            target,
            body,
            secrets=secrets,
            ignore_fields=self.ignore_fields,
            normalise=self.normalise,
        )

    def _claim(self, key: RequestKey) -> tuple[int | None, str | None]:
        """Take the next exchange recorded for *key*: ``(index, None)``, or ``(None, problem)`` when there is none."""
        with self._lock:
            canonical = key.canonical()
            queue = self._queues.get(canonical)
            if queue:
                self._replayed += 1
                return queue.popleft(), None
            if self.active_mode == "record-missing":
                return None, None
            exhausted = sum(1 for e in self._loaded if e.request.canonical() == canonical)
            unused = sorted(index for queue in self._queues.values() for index in queue)
            candidates = [self._loaded[index] for index in unused] or self._loaded  # rather the unreplayed
            problem = mismatch_report(self.path, key, candidates, exhausted=exhausted)
            self._problems.append(problem)
            return None, problem

    async def _handle(self, transport: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        secrets = secrets_of(request.headers.items(), str(request.url))
        key = self._key(request, body, secrets)
        if self.active_mode in ("replay", "record-missing"):
            index, problem = self._claim(key)
            if index is not None:
                return await self._forward(request, body, str(index))
            if problem is not None:
                with self._lock:
                    reference = f"problem-{self._problems.index(problem)}"
                return await self._forward(request, body, reference)
        return await self._record(transport, request, key, secrets)

    async def _forward(self, request: httpx.Request, body: bytes, reference: str) -> httpx.Response:
        server = self.server
        if server is None:
            raise CassetteError(f"cassette {self.path} is not active")
        # A transport of its own per request (plain HTTP, no keep-alive, nothing to close): its connection pool
        # is bound to the event loop and library of its first use, and a cassette may span several event loops
        # (``with Cassette(...)`` around ``trio.run`` then ``asyncio.run``, or threads).
        transport = httpx.AsyncHTTPTransport(verify=False, limits=httpx.Limits(max_keepalive_connections=0))
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() != "host"]
        replay_request = httpx.Request(
            request.method,
            request.url.copy_with(scheme="http", host="127.0.0.1", port=server.port),
            headers=[*headers, (ENTRY_HEADER, reference)],
            content=body,
            extensions=request.extensions,
        )
        return await _original_handle(transport, replay_request)

    async def _record(
        self,
        transport: httpx.AsyncHTTPTransport,
        request: httpx.Request,
        key: RequestKey,
        secrets: tuple[str, ...],
    ) -> httpx.Response:
        request.headers["accept-encoding"] = "identity"  # keep the stored body readable text
        recording = _Recording(key=key, secrets=secrets, started=time.monotonic())
        with self._lock:
            self._recordings.append(recording)  # in the order the requests are sent
        try:
            response = await _original_handle(transport, request)
        except BaseException as error:
            if not isinstance(error, Exception):  # cancelled before the response head: replayed as no answer
                recording.end = "cancelled"
            raise  # an error (connection, timeout ...) is not recorded: the client's retry, if any, is
        recording.latency = time.monotonic() - recording.started
        recording.status = response.status_code
        recording.headers = tuple(
            sorted(
                (name, redact_text(value, secrets))
                for name in KEPT_RESPONSE_HEADERS
                if (value := response.headers.get(name)) is not None
            )
        )
        stream = cast(httpx.AsyncByteStream, response.stream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_TeeStream(stream, recording),
            extensions=response.extensions,
        )

    # -- the replay server's side ------------------------------------------------------------------------------
    def _serve(self, request: RecordedRequest) -> ScriptedResponse:
        reference = request.headers.get(ENTRY_HEADER)
        route = request.path.split("?", 1)[0]
        if reference is None:  # sent to the server directly (its base_url given to an agent)
            key = RequestKey.build(
                request.method,
                request.path,
                request.body,
                secrets=secrets_of(request.headers.items(), request.path),
                ignore_fields=self.ignore_fields,
                normalise=self.normalise,
            )
            index, problem = self._claim(key)
            if index is None:
                return _mismatch_response(route, problem or "no recorded exchange")
        elif reference.startswith("problem-"):
            with self._lock:
                problem = self._problems[int(reference.removeprefix("problem-"))]
            return _mismatch_response(route, problem)
        else:
            index = int(reference)
        return self._scripted(self._loaded[index])

    def _scripted(self, exchange: Exchange) -> ScriptedResponse:
        original = self.timing == "original"
        if exchange.status is None:  # the client gave up before the head: it gets none now either
            return ScriptedResponse(status=200, body=[], end="abort", before_headers=Hang())
        steps: list[Pause | Raw | Hang] = []
        for n, chunk in enumerate(exchange.chunks):
            if original and exchange.delays is not None and exchange.delays[n] > 0:
                steps.append(Pause(exchange.delays[n]))
            steps.append(Raw(chunk))
        if exchange.end == "cancelled":
            steps.append(Hang())  # the client stopped reading here: send no more until it goes away
        latency = exchange.latency if original else None
        return ScriptedResponse(
            status=exchange.status,
            headers=exchange.headers,
            body=steps,
            end="abort" if exchange.end == "cancelled" else exchange.end,
            before_headers=Pause(latency) if latency else None,
        )


def _mismatch_response(route: str, message: str) -> ScriptedResponse:
    if route.endswith("/messages"):
        return anthropic_error(404, message, type="cassette_mismatch", request_id=None, should_retry=False)
    return openai_error(
        404, message, type="cassette_mismatch", code="cassette_mismatch", request_id=None, should_retry=False
    )
