"""The ``MiniAgents`` context: the nursery that supervises every call, persistence and the error ledger.

``async with MiniAgents():`` opens two nested task groups in the current task:

* the *calls* group holds every call started outside an agent (calls started inside an agent are children of
  that agent's call), plus pumps that feed those calls;
* the *service* group, around it, holds the persistence worker.

Leaving the block finishes every call input that is still open (a forgotten ``finish()`` never hangs the
block), waits for the calls, drains persistence, closes shared resources, and finally raises the errors that no
consumer observed.  Cancelling the block (or a scope around it) cancels everything it started.
"""

from __future__ import annotations

import inspect
import itertools
import sys
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable
from contextlib import AsyncExitStack
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, cast, runtime_checkable

import anyio
import attrs
import sniffio

from miniagents._exceptions import MiniAgentsError, NoActiveContextError
from miniagents._frozen import EMPTY
from miniagents._limits import RateLimiter
from miniagents._messages import _CONTENT_ONLY_PREFIX, Message
from miniagents._observe import CallObserver, resolve_observers
from miniagents._records import CallRecord
from miniagents._scope import TaskGroupLike, current_call, current_context, open_task_group

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup

if TYPE_CHECKING:
    from miniagents._agents import AgentCall

T = TypeVar("T")
_set_slot = object.__setattr__
PersistHandler = Callable[[Message], "Awaitable[None] | None"]
BatchPersistHandler = Callable[[list[Message]], "Awaitable[None] | None"]
CallHandler = Callable[[CallRecord], "Awaitable[None] | None"]


@runtime_checkable
class Store(Protocol):
    """What ``MiniAgents(store=...)`` accepts: an object with persistence handler methods.

    ``on_persist_message(message)`` is required, ``on_call_finished(record)`` is optional; either may be
    ``async``.  A store that is also an async context manager is entered when the context is entered and
    exited after every queued message and record was handed to it.

    Optional batch form: a store that also has ``on_persist_messages(messages)`` gets that method called
    instead of ``on_persist_message``, with a ``list`` of every message queued since its last call (same
    order, same exactly-once rule, nested messages before their holders; a call's messages still come before
    its ``on_call_finished`` record).  One call per batch instead of one per message is what keeps a store
    cheap on the agents' event loop.  The runtime does not use the list after the call (the store may keep it).
    """

    def on_persist_message(self, message: Message) -> Awaitable[None] | None:
        """Store *message* (called once per distinct hash key)."""


_NOTE = "miniagents: no consumer observed this error; raised when the MiniAgents block exited"

_activations = itertools.count(1)

#: How long persistence may go on draining when a ``MiniAgents`` block is cancelled.
PERSISTENCE_GRACE_SECONDS = 1.0


class ErrorLedger:
    """Failures that happened in a context, so that none is lost: raised at exit unless observed.

    Tracked per exception object.  A failure opens an entry; a consumer that has the error raised closes it;
    a *new* failure with the same object (an agent that let an error from its input propagate) opens it
    again, because that agent's consumers have not seen it yet.  Errors merely passed on by pumps (a call's
    input forwarding a failed sequence) are not new failures.
    """

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: dict[int, BaseException] = {}

    def record(self, error: BaseException) -> None:
        """A buffer failed with *error*: it counts until a consumer has it raised."""
        self._open.pop(id(error), None)
        self._open[id(error)] = error  # re-inserted: errors are reported in the order of their last failure

    def observe(self, error: BaseException) -> None:
        """A consumer had *error* raised."""
        self._open.pop(id(error), None)

    def record_error(self, error: BaseException) -> None:
        """Remember an error nobody can observe (e.g. from a persistence handler)."""
        self.record(error)

    def unobserved(self) -> list[BaseException]:
        """Errors not observed since their last failure, in the order of those failures."""
        return list(self._open.values())


@attrs.frozen
class ContextStatistics:
    """A snapshot of a context's state, from :meth:`MiniAgents.statistics`."""

    active: bool
    open_inputs: int
    persisted_messages: int
    pending_persistence: int
    unobserved_errors: int


class MiniAgents:
    """The context every agent call runs in: ``async with MiniAgents():`` or ``MiniAgents().run(main())``.

    Args:
        on_persist_message: a handler, or a list of handlers, called exactly once per distinct message (by
            ``hash_key``) produced or sent in this context, nested messages before the message that holds
            them.  Handlers may be plain or ``async`` functions of one message; they run one message at a time
            in a worker task, off the agents' path.  A handler's exception is raised when the block exits.
        on_call_finished: a handler, or a list of handlers, called with a :class:`~miniagents.CallRecord` for
            every call that ends in this context (completed, failed or cancelled), after the handlers saw its
            messages.  Plain or ``async``; same worker, same error rules as ``on_persist_message``.
        store: an object with ``on_persist_message`` (and optionally ``on_call_finished``) methods, e.g.
            ``miniagents.persistence.SQLiteStore``; entered as an async context manager if it is one.
        errors_as_messages: deliver an agent's exception to its consumers as an
            :class:`~miniagents.ErrorMessage` (``"ValueError: boom"``) instead of raising it.
        call_observers: objects told when each call starts, runs and ends (:class:`~miniagents.CallObserver`).
        tracing: OpenTelemetry tracing of every call (``pip install miniagents[otel]``): ``None`` (default)
            traces when a tracer provider is configured, ``False`` never, ``True`` with the global provider, or
            pass a ``TracerProvider``.  See :mod:`miniagents.tracing`.
        rate_limiter: a :class:`~miniagents.RateLimiter` every LLM agent request in this context goes through
            (every attempt, retries included, however deeply nested the call, tool calls included).

    Contexts may nest; the innermost active one is used.  Works inside any trio or asyncio program.
    """

    def __init__(
        self,
        *,
        on_persist_message: PersistHandler | Iterable[PersistHandler] | None = None,
        on_call_finished: CallHandler | Iterable[CallHandler] | None = None,
        store: Store | None = None,
        errors_as_messages: bool = False,
        call_observers: Iterable[CallObserver] = (),
        tracing: Any = None,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        self._handlers: list[PersistHandler] = _handler_list(on_persist_message, "on_persist_message")
        self._call_handlers: list[CallHandler] = _handler_list(on_call_finished, "on_call_finished")
        self._batch_handlers: list[BatchPersistHandler] = []
        if store is not None:
            if not callable(getattr(store, "on_persist_message", None)):
                raise TypeError(f"store= needs an object with an on_persist_message method, got {store!r}")
            on_batch = getattr(store, "on_persist_messages", None)
            if callable(on_batch):
                self._batch_handlers.append(on_batch)
            else:
                self._handlers.append(store.on_persist_message)
            on_call = getattr(store, "on_call_finished", None)
            if callable(on_call):
                self._call_handlers.append(on_call)
        self.store = store
        self._call_observers = tuple(call_observers)
        self._tracing = tracing
        if rate_limiter is not None and not isinstance(rate_limiter, RateLimiter):
            raise TypeError(
                f"rate_limiter= needs a miniagents.RateLimiter, got {type(rate_limiter).__name__}"
            )
        #: The limiter of every LLM request made in this context (``None``: not limited).
        self.rate_limiter = rate_limiter
        #: The observers of the current activation (``call_observers`` plus tracing when it is on).
        self.observers: tuple[CallObserver, ...] = ()
        self.run_id = ""
        self.errors_as_messages = errors_as_messages
        self.ledger = ErrorLedger()
        self._active = False
        self._stack: AsyncExitStack | None = None
        self._calls_tg: TaskGroupLike | None = None
        self.native_trio = False
        self._open_calls: dict[AgentCall, None] = {}
        self._seen: set[str] = set()
        self._activation = 0
        self._persist_queue: deque[Message | CallRecord] = deque()
        # Taken from the queue by the worker and not handed over yet (see _persistence_loop).
        self._persist_batch: list[Message | CallRecord] = []
        self._persist_pos = 0  # the next item for the per-message and call handlers
        self._persist_batched = 0  # the batch handlers have the messages before this index
        self._persist_event: anyio.Event | None = None
        self._persist_closing = False
        self._persisted = 0
        self._resources: dict[Hashable, tuple[Any, Callable[[Any], Awaitable[None]] | None]] = {}
        self._tokens: tuple[Token[MiniAgents | None], Token[AgentCall | None]] | None = None

    # -- public helpers -------------------------------------------------------------------------------------
    @classmethod
    def current(cls) -> MiniAgents:
        """Return the innermost active context.  Raises :class:`NoActiveContextError` when there is none."""
        context = current_context.get()
        if context is None:
            raise NoActiveContextError("no MiniAgents context is active")
        return context

    def on_persist_message(self, handler: PersistHandler) -> PersistHandler:
        """Register *handler* (decorator form of the ``on_persist_message=`` option); returns it unchanged."""
        if not callable(handler):
            raise TypeError(f"on_persist_message handlers must be callables, got {handler!r}")
        self._handlers.append(handler)
        return handler

    def on_call_finished(self, handler: CallHandler) -> CallHandler:
        """Register *handler* (decorator form of the ``on_call_finished=`` option); returns it unchanged."""
        if not callable(handler):
            raise TypeError(f"on_call_finished handlers must be callables, got {handler!r}")
        self._call_handlers.append(handler)
        return handler

    @property
    def persists(self) -> bool:
        """Whether any persistence handler is registered."""
        return bool(self._handlers or self._batch_handlers)

    @property
    def records_calls(self) -> bool:
        """Whether any ``on_call_finished`` handler is registered."""
        return bool(self._call_handlers)

    def shared_resource(
        self, key: Hashable, factory: Callable[[], T], *, aclose: Callable[[T], Awaitable[None]] | None = None
    ) -> T:
        """Return the object stored under *key*, creating it with *factory* on first use.

        ``await aclose(obj)`` runs when the context exits, after every call finished (in reverse order of
        creation), even when the block is cancelled.  Use it for pooled clients shared by all calls.
        """
        entry = self._resources.get(key)
        if entry is None:
            if not self._active:
                raise NoActiveContextError("shared_resource() needs the MiniAgents context to be active")
            value = factory()
            self._resources[key] = (value, aclose)
            return value
        return entry[0]  # type: ignore[no-any-return]

    def statistics(self) -> ContextStatistics:
        """Return a snapshot of the context's state, for introspection and tests."""
        return ContextStatistics(
            active=self._active,
            open_inputs=len(self._open_calls),
            persisted_messages=self._persisted,
            pending_persistence=len(self._persist_queue) + len(self._persist_batch) - self._persist_pos,
            unobserved_errors=len(self.ledger.unobserved()),
        )

    # -- TaskOwner ------------------------------------------------------------------------------------------
    accepts_children = True

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Start an internal task in the calls group."""
        tg = self._calls_tg
        if tg is None:
            raise NoActiveContextError("this MiniAgents context is not active")
        tg.start_soon(fn, *args)

    def register_open_call(self, call: AgentCall) -> None:
        """Remember a call whose input is open (finished when the block exits)."""
        self._open_calls[call] = None

    def forget_open_call(self, call: AgentCall) -> None:
        """Forget a call whose input was finished."""
        self._open_calls.pop(call, None)

    # -- persistence ----------------------------------------------------------------------------------------
    def persist(self, message: Message) -> None:
        """Queue *message* (and, first, the messages nested in it) for the handlers, once per hash key."""
        # Called for every message appended to every sequence: the common cases return first.
        activation = self._activation
        if message._persisted_in == activation or not (self._handlers or self._batch_handlers):
            return
        _set_slot(message, "_persisted_in", activation)
        key = message.hash_key
        seen = self._seen
        if key in seen:
            return
        seen.add(key)
        extra = message._extra
        # It may hold messages when it has extra fields or declared ones.  (``extra is EMPTY`` first: the
        # truth test of a FrozenDict is a Python-level __len__ call.)
        if (extra is not EMPTY and extra) or _CONTENT_ONLY_PREFIX[type(message)] is None:
            for sub in message.sub_messages():
                self.persist(sub)
        self._persist_queue.append(message)  # _enqueue, inlined
        event = self._persist_event
        if event is not None:
            self._persist_event = None
            event.set()

    def record_call(self, record: CallRecord) -> None:
        """Queue a finished call's record for the ``on_call_finished`` handlers."""
        if self._call_handlers:
            self._enqueue(record)

    def _enqueue(self, item: Message | CallRecord) -> None:
        self._persist_queue.append(item)
        event = self._persist_event
        if event is not None:
            self._persist_event = None
            event.set()

    async def _persistence_worker(self) -> None:
        try:
            await self._persistence_loop()
        except anyio.get_cancelled_exc_class():
            # The block is being cancelled: what was produced before (and the records of the calls the
            # cancellation ends) still reaches the handlers, within a grace period so that a hung handler
            # cannot keep the block from being cancelled.
            with anyio.move_on_after(PERSISTENCE_GRACE_SECONDS, shield=True):
                await self._persistence_loop()
            raise

    async def _persistence_loop(self) -> None:
        """Hand queued items to the handlers until the context closes.

        The worker takes the whole queue at once into ``_persist_batch`` and walks it: each run of messages
        goes to every batch handler in one call and to the per-message handlers one message at a time; each
        call record goes to the ``on_call_finished`` handlers after the messages queued before it.
        Batch handlers get a run before the per-message handlers.  ``_persist_pos`` and ``_persist_batched``
        are advanced before each handover, so the grace loop that runs after a cancellation resumes where the
        interrupted one stopped: an item is never handed to the same handlers twice, and an async handler
        that hangs on one message keeps no other message from the other handlers.
        """
        queue = self._persist_queue
        while True:
            while self._persist_pos < len(self._persist_batch) or queue:
                if self._persist_pos >= len(self._persist_batch):
                    self._persist_batch = list(queue)
                    self._persist_pos = self._persist_batched = 0
                    queue.clear()
                await self._hand_over(self._persist_batch)
                self._persist_batch = []
                self._persist_pos = self._persist_batched = 0
            if self._persist_closing:
                return
            event = self._persist_event = anyio.Event()
            await event.wait()

    async def _hand_over(self, items: list[Message | CallRecord]) -> None:
        end = len(items)
        while self._persist_pos < end:
            start = self._persist_pos
            item = items[start]
            if isinstance(item, CallRecord):
                self._persist_pos = start + 1
                for call_handler in self._call_handlers:
                    await self._call_handler(call_handler, item)
                continue
            stop = start + 1
            while stop < end and not isinstance(items[stop], CallRecord):
                stop += 1
            batched = max(start, self._persist_batched)
            if batched < stop:
                self._persist_batched = stop
                self._persisted += stop - batched
                if self._batch_handlers:
                    messages = cast("list[Message]", items[batched:stop] if batched or stop < end else items)
                    for batch_handler in self._batch_handlers:
                        await self._call_handler(batch_handler, messages)
            handlers = self._handlers
            if handlers:
                for position in range(start, stop):
                    self._persist_pos = position + 1
                    message = cast(Message, items[position])
                    for handler in handlers:  # inlined _call_handler: one await less per message
                        try:
                            result = handler(message)
                            if result is not None and inspect.isawaitable(result):
                                await result
                        except Exception as exc:
                            self.ledger.record_error(_with_handler_note(exc, handler, message))
            self._persist_pos = stop

    async def _call_handler(self, handler: Callable[[Any], Any], item: CallRecord | list[Message]) -> None:
        try:
            result = handler(item)
            if result is not None and inspect.isawaitable(result):
                await result
        except Exception as exc:
            self.ledger.record_error(_with_handler_note(exc, handler, item))

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def __aenter__(self) -> MiniAgents:
        if self._active:
            raise MiniAgentsError("this MiniAgents context is already active")
        self._active = True  # at once: a second task entering concurrently is refused
        self.ledger = ErrorLedger()
        self._seen = set()
        self._activation = next(_activations)  # marks the messages this activation queued already
        self._persist_closing = False
        self.run_id = uuid.uuid4().hex
        self.observers = resolve_observers(self._call_observers, self._tracing)
        # Set first, so the persistence worker (and anything the store starts) sees this context as current.
        self._tokens = (current_context.set(self), current_call.set(None))
        # Exit runs in reverse: finish open inputs, wait for the calls, let persistence drain, wait for the
        # worker, close shared resources, then close the store.
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            if self.store is not None and hasattr(self.store, "__aenter__"):
                await stack.enter_async_context(self.store)  # type: ignore[arg-type]
            stack.push_async_callback(self._close_resources)
            self.native_trio = sniffio.current_async_library() == "trio"
            service_tg = await stack.enter_async_context(open_task_group(self.native_trio))
            service_tg.start_soon(self._persistence_worker)
            stack.callback(self._close_persistence)
            self._calls_tg = await stack.enter_async_context(open_task_group(self.native_trio))
            stack.callback(self._finish_open_inputs)
        except BaseException:
            await stack.aclose()
            context_token, call_token = self._tokens
            current_context.reset(context_token)
            current_call.reset(call_token)
            self._tokens = None
            self._active = False
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        stack = self._stack
        assert stack is not None and self._tokens is not None and self._calls_tg is not None
        incoming = exc
        body_failed = exc is not None and not isinstance(exc, anyio.get_cancelled_exc_class())
        if body_failed:
            # An error in the body ends the block: cancel every call it started (as a nursery does), wait
            # for them, and re-raise the error itself rather than wrapped in the task groups' exception groups.
            self._calls_tg.cancel_scope.cancel()
            exc_type, exc, tb = None, None, None
        raised: BaseException | None = exc
        try:
            try:
                if await stack.__aexit__(exc_type, exc, tb):
                    raised = None
            except BaseException as new:
                raised = new
        finally:
            context_token, call_token = self._tokens
            current_context.reset(context_token)
            current_call.reset(call_token)
            self._tokens = None
            self._stack = None
            self._calls_tg = None
            self._active = False
        if body_failed:
            assert incoming is not None
            raised = incoming if raised is None else BaseExceptionGroup("errors on exit", [incoming, raised])
        errors = [e for e in self.ledger.unobserved() if e is not raised]
        if not errors:
            if raised is None:
                return incoming is not None  # a cancellation that ended at our own scopes
            if raised is incoming:
                return False  # re-raised by Python as it was
            raise raised
        for error in errors:
            _add_note(error, _NOTE)
        if raised is None:
            if len(errors) == 1:
                raise errors[0]
            raise ExceptionGroup("errors in agents that no consumer observed", errors)  # type: ignore[type-var]
        raise BaseExceptionGroup("errors in agents that no consumer observed", [raised, *errors])

    def _finish_open_inputs(self) -> None:
        for call in list(self._open_calls):
            call.finish()

    def _close_persistence(self) -> None:
        self._persist_closing = True
        event = self._persist_event
        if event is not None:
            self._persist_event = None
            event.set()

    async def _close_resources(self) -> None:
        resources = list(self._resources.values())
        self._resources.clear()
        with anyio.CancelScope(shield=True):
            for value, aclose in reversed(resources):
                if aclose is not None:
                    await aclose(value)

    def run(
        self,
        main: Coroutine[Any, Any, T] | Callable[[], Awaitable[T]],
        *,
        backend: Literal["trio", "asyncio"] = "trio",
        backend_options: dict[str, Any] | None = None,
    ) -> T:
        """Run *main* (a coroutine, or an async function of no arguments) inside this context.

        Starts an event loop with anyio: trio by default, ``backend="asyncio"`` on request.  Returns what
        *main* returns.
        """

        async def runner() -> T:
            async with self:
                result = await (main if inspect.isawaitable(main) else main())
            return result

        return anyio.run(runner, backend=backend, backend_options=backend_options)


def _with_handler_note(
    error: Exception, handler: Any, item: Message | CallRecord | list[Message]
) -> Exception:
    name = getattr(handler, "__qualname__", repr(handler))
    if isinstance(item, list):
        what = f"on_persist_messages handler {name} for a batch of {len(item)} messages"
    elif isinstance(item, CallRecord):
        what = f"on_call_finished handler {name} for call #{item.call_id} of {item.agent_alias!r}"
    else:
        what = f"on_persist_message handler {name} for message {item.hash_key[:12]}"
    _add_note(error, "miniagents: in " + what)
    return error


def _handler_list(handlers: Any, option: str) -> list[Any]:
    if handlers is None:
        result = []
    elif callable(handlers):
        result = [handlers]
    else:
        result = list(handlers)
    for handler in result:
        if not callable(handler):
            raise TypeError(f"{option} handlers must be callables, got {handler!r}")
    return result


def _add_note(error: BaseException, note: str) -> None:
    notes = getattr(error, "__notes__", None)
    if notes and note in notes:
        return
    if hasattr(error, "add_note"):
        error.add_note(note)
    else:  # pragma: no cover - Python 3.10
        error.__notes__ = [*(notes or ()), note]  # type: ignore[attr-defined]
