"""The durable runtime: DBOS launched on its own asyncio loop, the workflow body, the exchange steps, ``run()``.

One :class:`DurableRuntime` is active per process (DBOS is a process-wide singleton).  It is entered inside a
:class:`~miniagents.MiniAgents` context, and every durable call this process runs (started here, dequeued from a
served queue, or recovered after a crash) runs as a root call of that context: its HTTP pool, rate limiter,
store and observers are shared by all of them.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import json
import os
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import anyio
import attrs
import httpx

import miniagents.durable._dbos_api as _dbos_api
from miniagents import __version__
from miniagents._calls import InteractionContext
from miniagents._context import MiniAgents
from miniagents._encoding import decode_value
from miniagents._messages import Message
from miniagents._scope import current_context
from miniagents._secrets import redact_text
from miniagents._sequence import MessageSequencePromise, MessageType
from miniagents.durable._agent import (
    DurableAgent,
    DurableScope,
    current_scope,
    registered_agent,
    registered_queues,
)
from miniagents.durable._bridge import Bridge, DBOSLoop
from miniagents.durable._exceptions import DurableCallError, DurableConfigError, ReplayMismatchError
from miniagents.durable._failures import decode_failure, encode_failure, recordable_class
from miniagents.llms._exceptions import LLMError
from miniagents.llms._exchange import (
    ExchangeRequest,
    RecordedResponse,
    Tee,
    active_exchange,
    replayed_response,
    tee_response,
)

__all__ = ["DATABASE_ENV", "DurableRuntime", "recover_executor", "run"]

#: The environment variable ``run()`` takes the database from when no runtime is active.
DATABASE_ENV = "MINIAGENTS_DURABLE_DB"

_active: DurableRuntime | None = None


def default_executor_id() -> str:
    """``<host>-<pid>``: distinct for every worker process."""
    return f"{socket.gethostname()}-{os.getpid()}"


@attrs.define(eq=False)
class _Slot:
    """The live replies of a durable call running in this process, for a caller in this process."""

    ready: anyio.Event = attrs.field(factory=anyio.Event)
    replies: MessageSequencePromise | None = None


class DurableRuntime:
    """DBOS for durable runs, for the duration of an ``async with`` block inside a ``MiniAgents`` context.

    Args:
        database: the DBOS system database: ``sqlite:///path.db`` (one process) or
            ``postgresql://user:pw@host:port/db`` (many processes, many machines).
        serve_queues: the queues whose calls this process runs (a worker); calls of agents without a queue
            are always run by the process that makes them, and recovered calls by any process.
        executor_id: this process's id for DBOS: ``"local"`` by default (one embedded process, which recovers
            its own pending calls when it starts again); give every worker its own (the worker entry point
            uses ``<host>-<pid>``).
        application_version: the DBOS application version: processes recover each other's calls only within
            one version.
        polling_interval: seconds between two polls of a queue or of a result in the database.
        worker_concurrency: at most this many calls of each served queue at once in this process (``None``:
            no limit); the workers of one queue should agree (DBOS keeps one setting per queue).
        log_level: DBOS's log level.

    Entering launches DBOS in a helper thread's asyncio loop (on trio and on asyncio alike), which recovers
    the calls this executor left PENDING (a crash): they run again at once, re-issuing only the LLM requests
    that had not finished.  Leaving shuts DBOS down; calls still running stay PENDING in the database.

    Raises:
        DurableConfigError: no ``MiniAgents`` context is active, another runtime is active in the process,
            the installed DBOS is outside the supported range, or DBOS cannot start on *database* (a wrong URL,
            an unreachable server; the message shows the URL with its password masked, never the password).

    """

    def __init__(
        self,
        database: str,
        *,
        serve_queues: Sequence[str] = (),
        executor_id: str = "local",
        application_version: str = f"miniagents-{__version__}",
        polling_interval: float = 0.05,
        worker_concurrency: int | None = None,
        log_level: str = "WARNING",
        app_name: str = "miniagents",
    ) -> None:
        self.database = database
        self.serve_queues = tuple(serve_queues)
        self.executor_id = executor_id
        self.application_version = application_version
        self.polling_interval = polling_interval
        self.worker_concurrency = worker_concurrency
        self.log_level = log_level
        self.app_name = app_name
        self.active = False
        self._context: MiniAgents | None = None
        self._loop: DBOSLoop | None = None
        self._bridge: Bridge | None = None
        self._slots: dict[str, _Slot] = {}
        self._run_ids: set[str] = set()

    def __repr__(self) -> str:
        return f"<DurableRuntime {masked_url(self.database)} executor_id={self.executor_id!r} active={self.active}>"

    @property
    def bridge(self) -> Bridge:
        """The loops' bridge (while active)."""
        if self._bridge is None:
            raise DurableConfigError("the DurableRuntime is not active")
        return self._bridge

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def __aenter__(self) -> DurableRuntime:
        global _active
        _dbos_api.check_version()
        try:
            context = MiniAgents.current()
        except Exception:
            raise DurableConfigError(
                "DurableRuntime needs an active MiniAgents context: enter it inside `async with MiniAgents():`"
            ) from None
        if _active is not None:
            raise DurableConfigError(
                "a DurableRuntime is active in this process already (DBOS is one per process)"
            )
        _active = self
        self._context = context
        try:
            self._loop = DBOSLoop()
            self._bridge = Bridge(self._loop.loop, context._spawn)
            _dbos_api.set_workflow_body(self._workflow_body)
            self.active = True

            async def launch() -> None:
                await _dbos_api.launch(
                    name=self.app_name,
                    database_url=self.database,
                    executor_id=self.executor_id,
                    application_version=self.application_version,
                    serve_queues=self.serve_queues,
                    declare_queues=sorted(registered_queues()),
                    queue_polling_interval=self.polling_interval,
                    worker_concurrency=self.worker_concurrency,
                    log_level=self.log_level,
                )

            failure: DurableConfigError | None = None
            try:
                await self._bridge.to_dbos(launch)
            except Exception as error:
                failure = _launch_error(self.database, error)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._shutdown()
            raise
        if failure is not None:
            with anyio.CancelScope(shield=True):
                await self._shutdown()
            raise failure  # outside the except block: the driver's error (and its connection) is not kept
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self._shutdown()

    async def _shutdown(self) -> None:
        global _active
        self.active = False
        loop = self._loop
        if loop is not None:
            await anyio.to_thread.run_sync(_destroy_quietly)
            await anyio.to_thread.run_sync(loop.stop)
        _dbos_api.set_workflow_body(None)
        self._loop = None
        self._bridge = None
        if _active is self:
            _active = None

    # -- running --------------------------------------------------------------------------------------------
    async def run(
        self, agent: DurableAgent, messages: MessageType | None = None, *, run_id: str, **kwargs: Any
    ) -> tuple[Message, ...]:
        """Run *agent* on *messages* as the durable run *run_id* and return its replies.

        The call is the root workflow, whose id is *run_id*; the durable calls it makes are its children.  With
        a *run_id* that finished, the recorded replies are returned (nothing runs); with one that was
        interrupted, the run resumes: finished calls are not run again, and only the LLM requests that were in
        flight are sent again.  Replies stream live to consumers in this process (``run`` returns them whole).
        Cancelling the caller ends ``run`` at once; the run itself stays in the runtime (it finishes there, or
        stays PENDING when the runtime is left first, and resumes when it is started again).

        Raises:
            TypeError: *agent* is not a :class:`DurableAgent`.
            DurableCallError: the run ended with an error.
            DurableConfigError: the runtime is not active.

        """
        if not isinstance(agent, DurableAgent):
            raise TypeError(f"run() needs a durable agent (durable(agent)), got {agent!r}")
        if not self.active:
            raise DurableConfigError("the DurableRuntime is not active: use `async with DurableRuntime(...)`")
        token = current_scope.set(DurableScope(self, run_id, None))
        try:
            replies = agent.inquire(messages, **kwargs)
        finally:
            current_scope.reset(token)
        # The caller owns the call: cancelled, it stops waiting at once (the workflow keeps running in the
        # runtime until it finishes or the runtime is left, and a later run() with this run id re-attaches).
        async with replies:
            return await replies

    async def call(
        self, ctx: InteractionContext, workflow_id: str, alias: str, queue: str | None, spec: str
    ) -> None:
        """Run (or re-attach to) the durable call *workflow_id* and reply its replies in *ctx* (app loop)."""
        slot = self._slots.setdefault(workflow_id, _Slot())
        result: list[str] = []
        interrupted: list[Exception] = []
        finished = anyio.Event()

        async def wait_result() -> None:
            def start() -> Any:
                return _dbos_api.start_and_wait(workflow_id, queue, spec, self.polling_interval)

            try:
                result.append(await self.bridge.to_dbos(start))
            except Exception as error:  # the runtime was left (or DBOS failed) while the call ran
                interrupted.append(error)
            finished.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_result)
                async with anyio.create_task_group() as first:

                    async def on(event: anyio.Event) -> None:
                        await event.wait()
                        first.cancel_scope.cancel()

                    first.start_soon(on, slot.ready)
                    first.start_soon(on, finished)
                live = slot.ready.is_set()
                if live:
                    assert slot.replies is not None
                    try:
                        async for promise in slot.replies.promises():
                            ctx.reply(promise)  # tokens stream on while the workflow runs here
                    except Exception:
                        pass
                await finished.wait()
        finally:
            if self._slots.get(workflow_id) is slot:
                del self._slots[workflow_id]
        if interrupted:
            cause = interrupted[0]
            if isinstance(cause, DurableConfigError):  # refused before it started (a run id reused): as it is
                raise cause
            raise DurableCallError(
                f"durable call of {alias!r} was interrupted ({type(cause).__name__}: {cause}); it stays PENDING "
                f"and resumes when a DurableRuntime starts again on its database [workflow {workflow_id}]",
                alias=alias,
                workflow_id=workflow_id,
                error_type=type(cause).__name__,
            )
        outcome = json.loads(result[0])
        error = outcome.get("error")
        if error is not None:
            raise DurableCallError(
                f"durable call of {alias!r} failed ({error['type']}: {error['message']}) [workflow {workflow_id}]",
                alias=alias,
                workflow_id=workflow_id,
                error_type=error["type"],
            )
        if not live:
            ctx.reply([Message.from_dict(data) for data in outcome["replies"]])

    # -- the workflow ---------------------------------------------------------------------------------------
    async def _workflow_body(self, spec: str) -> str:
        """The DBOS workflow of one durable call (DBOS loop): the agent runs on the application's loop."""
        workflow_id = _dbos_api.current_workflow_id()
        recorder = _StepRecorder(self.bridge, contextvars.copy_context(), workflow_id)
        return await self.bridge.to_app(lambda: self._execute(workflow_id, json.loads(spec), recorder))

    async def _execute(self, workflow_id: str, spec: dict[str, Any], recorder: _StepRecorder) -> str:
        """Run the durable call's agent in the runtime's context and return its outcome as JSON (app loop)."""
        assert self._context is not None
        agent = registered_agent(spec["alias"]).inner
        inputs = [Message.from_dict(data) for data in spec["input"]]
        kwargs = decode_value(spec["kwargs"])
        with self._context.attach():
            scope_token = current_scope.set(DurableScope(self, spec["run_id"], workflow_id))
            exchange_token = active_exchange.set(recorder)
            try:
                replies = agent.inquire(inputs, **kwargs)
            finally:
                active_exchange.reset(exchange_token)
                current_scope.reset(scope_token)
        slot = self._slots.setdefault(workflow_id, _Slot())
        slot.replies = replies
        slot.ready.set()
        try:
            # Leaving the block cancelled (the runtime is left, the workflow is cancelled) cancels the agent's
            # call and waits for it: nothing it started (an LLM stream) outlives the workflow.
            async with replies:
                try:
                    messages = await replies
                finally:
                    # The failure markers of exchanges that failed last are written before the outcome is.
                    await recorder.settle()
        except Exception as error:
            return json.dumps({"error": {"type": type(error).__name__, "message": str(error)}})
        finally:
            if self._slots.get(workflow_id) is slot:
                del self._slots[workflow_id]
        return json.dumps({"replies": [m.to_dict() for m in messages]}, ensure_ascii=False)


def masked_url(url: str) -> str:
    """*url* with the password of its user part replaced by ``***`` (for errors and logs)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<a database URL that could not be parsed>"
    if not password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _launch_error(database: str, error: Exception) -> DurableConfigError:
    """The :class:`DurableConfigError` of a failed launch: the URL (masked) and the cause, never the password."""
    detail = " ".join(f"{type(error).__name__}: {error}".split())
    try:
        password = urlsplit(database).password
    except ValueError:
        password = None
    if password:
        detail = redact_text(detail, [password, quote(password, safe="")])
    return DurableConfigError(
        f"DBOS could not start on the database {masked_url(database)} (check the URL: sqlite:///path.db "
        f"or postgresql://user:password@host:port/database, and that the server runs): {detail[:1000]}"
    )


def _destroy_quietly() -> None:
    _dbos_api.destroy()


def _encode_record(recorded: RecordedResponse, digest: str, failure: dict[str, Any] | None = None) -> str:
    data: dict[str, Any] = {
        "digest": digest,
        "status": recorded.status,
        "headers": [list(pair) for pair in recorded.headers],
        **_encode_body(recorded.body),
    }
    if failure is not None:
        data["failure"] = failure
    return json.dumps(data)


def _redacted_bytes(body: bytes, secrets: Sequence[str]) -> bytes:
    """*body* with *secrets* redacted (see ``redact_text``); bytes that are not UTF-8 are kept as they are."""
    text = body.decode("utf-8", "surrogateescape")
    redacted = redact_text(text, secrets)
    return body if redacted == text else redacted.encode("utf-8", "surrogateescape")


def _encode_body(body: bytes) -> dict[str, str]:
    try:
        return {"text": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(body).decode("ascii")}


@attrs.frozen
class _Record:
    """A step's record: the response (as far as it was read), the request's digest, and a failure marker."""

    response: RecordedResponse
    digest: str
    #: The failure marker (see ``_failures.py``) of a failed exchange, else ``None``.
    failure: dict[str, Any] | None = None


def _decode_record(text: str) -> _Record:
    data = json.loads(text)
    headers = tuple((str(name), str(value)) for name, value in data["headers"])
    body = data["text"].encode("utf-8") if "text" in data else base64.b64decode(data["base64"])
    failure = data.get("failure")
    return _Record(RecordedResponse(int(data["status"]), headers, body), str(data["digest"]), failure)


class _WatchedStream(httpx.AsyncByteStream):
    """A live response's byte stream that notes whether reading it failed (a broken connection, a timeout)."""

    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self._inner = inner
        self.failed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except Exception:
            self.failed = True
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()


class _FailingStream(httpx.AsyncByteStream):
    """A replayed body that ends as the live one did: its bytes, then the recorded error (when reading failed)."""

    def __init__(self, body: bytes, error: LLMError | None) -> None:
        self._body = body
        self._error = error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._body:
            yield self._body
        if self._error is not None:
            raise self._error

    async def aclose(self) -> None:
        pass


class _StepRecorder:
    """The exchange hook of one durable call: each LLM exchange is one DBOS step of the call's workflow.

    The step's recorded result is the raw response (status, the kept headers, the body bytes) and the digest of
    the request.  Live, the response streams to the adapter as it arrives and is recorded when it was read to
    its end; replayed, the adapter parses the recorded bytes (no request is sent).

    Outcomes of a live exchange, and what its step records:

    * **Success**: the response, as above.
    * **A failure of the LLM layer's exception tree** (:class:`~miniagents.llms.LLMError`: the provider's error
      status after the layer's own retries, a connection error or timeout it raised, a stream cut off or an
      error event in it, a malformed response): a failure marker (``_failures.py``: the error's class, message,
      status, type, code, request id, provider; never its body, a request header or a key) with the part of the
      body the adapter had read.  Replayed, the step raises an equal error (same class, status, request id,
      message) without sending anything, after the recorded part of the body when the failure came while it
      was read (so tokens the consumers saw stream again, and the adapter fails the same way).  An agent that
      catches the error and retries or falls back therefore takes the same path when it resumes, and its later
      steps line up with their records.  The request's secrets (``ExchangeRequest.secrets``) are redacted
      from every string of the marker, so a key a server echoed in its error message is not recorded; the
      next exchange of the call, and the end of the call, wait until the marker is written, so the records
      stay in call order.
    * **A cancellation** (the call cancelled, the runtime left, a timeout scope around the request): nothing
      is recorded.  DBOS has drawn the step's id all the same (ids are drawn in call order when a step starts),
      so the id stays empty: when the call resumes, the exchange that reaches that id (the cancelled one, when
      the whole call was cancelled) runs live again and is recorded there.  A cancellation the agent catches
      and goes on from (its own ``move_on_after``, or the LLM ``timeout=`` option, which the LLM layer turns
      into ``LLMTimeoutError`` after cancelling the exchange) is not an outcome a replay can reproduce: the
      resumed call sends that request again, and if it then takes another path, the first differing request
      raises :class:`ReplayMismatchError` instead of being answered from another request's record.
    * **Any other exception** (a bug in an adapter or in the code reading the stream): nothing is recorded,
      like a cancellation.  It is not the provider's answer: recorded, it would be raised again on every resume
      after the bug was fixed, and its attributes are arbitrary objects that may hold request data.
    """

    def __init__(self, bridge: Bridge, context: contextvars.Context, workflow_id: str) -> None:
        self._bridge = bridge
        self._context = context
        self._workflow_id = workflow_id
        self._unwritten: list[
            anyio.Event
        ] = []  # the steps of failed exchanges whose marker is not written yet

    async def settle(self) -> None:
        """Wait until the failure markers of this call's failed exchanges are written (app loop)."""
        while self._unwritten:
            await self._unwritten[0].wait()
            self._unwritten = [event for event in self._unwritten if not event.is_set()]

    def exchange(
        self,
        request: ExchangeRequest,
        live: Callable[[], AbstractAsyncContextManager[httpx.Response]],
    ) -> AbstractAsyncContextManager[httpx.Response]:
        return self._exchange(request, live)

    @asynccontextmanager
    async def _exchange(
        self,
        request: ExchangeRequest,
        live: Callable[[], AbstractAsyncContextManager[httpx.Response]],
    ) -> AsyncIterator[httpx.Response]:
        await self.settle()
        bridge = self._bridge
        decided = anyio.Event()
        committed = anyio.Event()
        decision: list[tuple[str, Any]] = []
        # Set on the application's loop, awaited on the DBOS loop.
        raw: asyncio.Future[str] | None = None
        raw_box: list[str | BaseException] = []

        def decide(kind: str, value: Any = None) -> None:
            if not decision:
                decision.append((kind, value))
                decided.set()

        def deliver(value: str | BaseException) -> None:
            # On the DBOS loop: hand the live response (or the abandonment) to the waiting step.
            raw_box.append(value)
            if raw is not None and not raw.done():
                if isinstance(value, BaseException):
                    raw.set_exception(value)
                else:
                    raw.set_result(value)

        async def step() -> str:
            nonlocal raw
            raw = asyncio.get_running_loop().create_future()
            if not raw_box:
                bridge.app_soon(lambda: decide("live"))
                value: str | BaseException = await raw
            else:  # abandoned before the step started
                value = raw_box[0]
            if isinstance(value, BaseException):
                raise value
            return value

        async def run_step() -> None:
            try:
                recorded = await _dbos_api.run_step(step)
            except asyncio.CancelledError:
                if not (raw_box and isinstance(raw_box[0], BaseException)):
                    bridge.app_soon(
                        lambda: decide("error", RuntimeError("the durable runtime is shutting down"))
                    )
                    bridge.app_soon(committed.set)
                    raise
                bridge.app_soon(committed.set)
                return
            except Exception as error:
                failure = error
                bridge.app_soon(lambda: decide("error", failure))
                bridge.app_soon(committed.set)
                return
            bridge.app_soon(lambda: decide("recorded", recorded))
            bridge.app_soon(committed.set)

        def abandon() -> None:
            bridge.dbos_soon(lambda: deliver(asyncio.CancelledError()))

        bridge.spawn_dbos(run_step, self._context.copy())
        try:
            await decided.wait()
        except BaseException:
            abandon()
            raise
        kind, value = decision[0]
        if kind == "error":
            raise value
        if kind == "recorded":
            record = _decode_record(value)
            if record.digest != request.digest:
                raise ReplayMismatchError(
                    f"workflow {self._workflow_id}: the LLM request at this point of the resumed call differs "
                    "from the recorded one (a durable call must make its LLM requests in a deterministic order; "
                    "make concurrent LLM sub-agents durable themselves)"
                )
            if record.failure is None:
                yield replayed_response(record.response, request)
                return
            error = decode_failure(record.failure)
            if not record.failure.get("started"):
                raise error  # it failed before a response started: nothing is yielded, as live
            response = replayed_response(record.response, request)
            response.stream = _FailingStream(
                record.response.body, error if record.failure.get("stream_failed") else None
            )
            yield response
            # The adapter read the recorded bytes without failing on them: the exchange fails as it did live.
            raise decode_failure(record.failure)
        tee: Tee | None = None
        watched: _WatchedStream | None = None
        try:
            async with live() as response:
                tee = tee_response(response)
                assert isinstance(response.stream, httpx.AsyncByteStream)
                watched = _WatchedStream(response.stream)
                response.stream = watched
                yield response
        except LLMError as error:
            if recordable_class(error) is None:
                abandon()
                raise
            self._write_failure(error, request, tee, watched, deliver, abandon, committed)
            raise
        except BaseException:
            abandon()
            raise
        assert tee is not None
        record_text = _encode_record(tee.recorded(), request.digest)
        bridge.dbos_soon(lambda: deliver(record_text))
        await committed.wait()

    def _write_failure(
        self,
        error: LLMError,
        request: ExchangeRequest,
        tee: Tee | None,
        watched: _WatchedStream | None,
        deliver: Callable[[str | BaseException], None],
        abandon: Callable[[], None],
        committed: anyio.Event,
    ) -> None:
        """Record *error*'s marker, with the request's secrets redacted, in the exchange's step (see the class)."""
        self._unwritten.append(committed)
        try:
            failure = {
                **encode_failure(error, request.secrets),
                "started": tee is not None,
                "stream_failed": watched is not None and watched.failed,
            }
            recorded = tee.recorded() if tee is not None else RecordedResponse(0, (), b"")
            if request.secrets and recorded.body:
                # The part of the body read before the failure may hold the key too: a mid-stream error event
                # echoing it.  The adapter parses the redacted bytes on replay, so it raises the error the
                # agent saw live (whose message the LLM layer redacted the same way).
                recorded = attrs.evolve(recorded, body=_redacted_bytes(recorded.body, request.secrets))
            text = _encode_record(recorded, request.digest, failure)
        except Exception:  # pragma: no cover - a marker that cannot be encoded: record nothing
            abandon()
            return
        self._bridge.dbos_soon(lambda: deliver(text))


async def run(
    agent: DurableAgent,
    messages: MessageType | None = None,
    *,
    run_id: str,
    database: str | None = None,
    **kwargs: Any,
) -> tuple[Message, ...]:
    """Run *agent* as the durable run *run_id* in the active :class:`DurableRuntime` (see :meth:`DurableRuntime.run`).

    With no active runtime, one is opened for this run on *database* (default: the ``MINIAGENTS_DURABLE_DB``
    environment variable), in the current ``MiniAgents`` context or in one opened for the run, and closed
    after it (launching DBOS costs a fraction of a second: open a runtime yourself for many runs).

    Raises:
        DurableConfigError: no runtime is active and no database is given.

    """
    runtime = _active
    if runtime is not None and runtime.active:
        return await runtime.run(agent, messages, run_id=run_id, **kwargs)
    database = database or os.environ.get(DATABASE_ENV)
    if not database:
        raise DurableConfigError(
            f"run() needs an active DurableRuntime (`async with DurableRuntime(database):`), database= or "
            f"{DATABASE_ENV}"
        )
    if current_context.get() is None:
        async with MiniAgents(), DurableRuntime(database) as opened:
            return await opened.run(agent, messages, run_id=run_id, **kwargs)
    async with DurableRuntime(database) as opened:
        return await opened.run(agent, messages, run_id=run_id, **kwargs)


def recover_executor(database: str, executor_id: str) -> list[str]:
    """Hand the PENDING calls of a dead executor (a worker that crashed for good) to the live processes.

    Each goes back on its queue (or DBOS's internal one) and runs again in whichever process takes it; its
    finished LLM exchanges are replayed from their records.  Use it only for an executor that is gone (two
    runs of one call at once would both send its in-flight requests); an executor that restarts with its own
    id recovers its calls by itself.  Blocking (call it in a thread from async code); returns the workflow ids.
    Also ``python -m miniagents.durable recover --db URL --executor-id ID``.
    """
    _dbos_api.check_version()
    return _dbos_api.recover_executor(database, executor_id)


def active_runtime() -> DurableRuntime | None:
    """The active runtime of the process, if any."""
    return _active
