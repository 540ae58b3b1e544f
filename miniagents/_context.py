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
import logging
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
import trio

from miniagents._dedup import NO_KEYS, cache_bound, check_cache_size, generation_size
from miniagents._exceptions import (
    AgentCallCancelledError,
    MiniAgentsError,
    NoActiveContextError,
    WrongEventLoopError,
)
from miniagents._frozen import EMPTY
from miniagents._ledger import ErrorLedger
from miniagents._ledger import add_note as _add_note
from miniagents._limits import RateLimiter
from miniagents._messages import _CONTENT_ONLY_PREFIX, Message, set_persisted_in
from miniagents._observe import CallObserver, resolve_observers
from miniagents._records import CallRecord
from miniagents._scope import (
    ScopedChildGroup,
    TaskGroupLike,
    _enclosing_group,
    current_call,
    current_context,
    loop_identity,
    open_task_group,
)

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup

if TYPE_CHECKING:
    from miniagents._scope import CallLike, ContextLike, WriterLike

T = TypeVar("T")
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

    Optional attribute ``deduplicates_by_hash_key``: a store that itself keeps at most one copy of a message
    per ``hash_key`` (so being handed a message it has already is harmless) sets it to ``True``, as
    ``SQLiteStore`` does.  When every persistence handler of a context is such a store's method, the context
    remembers only a bounded number of recent keys (``MiniAgents(dedup_cache_size=...)``) instead of every key
    of its lifetime: the store may then be handed a message again after its key was dropped from that cache,
    and must store it once all the same.  Without the attribute a store gets each distinct message exactly once
    per context, at the memory cost described under ``dedup_cache_size``.
    """

    def on_persist_message(self, message: Message) -> Awaitable[None] | None:
        """Store *message* (called once per distinct hash key; see ``deduplicates_by_hash_key`` above)."""


_NOTE = "miniagents: no consumer observed this error; raised when the MiniAgents block exited"
_CANCELLED_NOTE = (
    "miniagents: no consumer observed this error, and the MiniAgents block was cancelled from outside: "
    "logged instead of raised, so that the cancellation reaches its scope"
)
_log = logging.getLogger("miniagents")

_activations = itertools.count(1)

#: How long persistence may go on draining when a ``MiniAgents`` block is cancelled.
PERSISTENCE_GRACE_SECONDS = 1.0


class ContextAttachment:
    """The block of :meth:`MiniAgents.attach`: the context is the current one inside it (``with`` or ``async with``).

    Entering checks that the context is active and that the calling task runs in its thread and event loop;
    leaving restores whatever was current before.  One attachment is entered once; ``attach()`` makes a new
    one for every block.
    """

    __slots__ = ("_context", "_entered", "_tokens")

    def __init__(self, context: MiniAgents) -> None:
        self._context = context
        self._entered = False
        self._tokens: tuple[Token[Any], Token[Any], Token[Any]] | None = None

    def __enter__(self) -> MiniAgents:
        context = self._context
        if self._entered:
            raise MiniAgentsError("this attach() block was entered already; call attach() for every block")
        if not context._active:
            raise NoActiveContextError(
                "attach() needs an active MiniAgents context: enter it first (e.g. `async with ma:` in the "
                "application's lifespan or its main task)"
            )
        context._check_loop("attach()")
        self._entered = True
        # New calls are root calls of the context: not children of whatever call or call group is current.
        self._tokens = (current_context.set(context), current_call.set(None), _enclosing_group.set(None))
        return context

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tokens is not None
        context_token, call_token, group_token = self._tokens
        self._tokens = None
        _enclosing_group.reset(group_token)
        current_call.reset(call_token)
        current_context.reset(context_token)

    async def __aenter__(self) -> MiniAgents:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def _current_trio_token() -> object:
    """The running trio loop's token, ``None`` outside trio (two trio runs of one thread differ only in it)."""
    try:
        return trio.lowlevel.current_trio_token()
    except RuntimeError:
        return None


@attrs.frozen
class ContextStatistics:
    """A snapshot of a context's state, from :meth:`MiniAgents.statistics`."""

    active: bool
    open_inputs: int
    persisted_messages: int
    pending_persistence: int
    unobserved_errors: int
    #: How many hash keys the context holds to hand each message to the handlers once (a key found in the
    #: older generation of a bounded cache is counted twice).
    dedup_keys: int = 0
    #: The most it may remember: ``dedup_cache_size``, or ``None`` when it keeps every key of the activation.
    dedup_cache_size: int | None = None


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
        dedup_cache_size: how many hash keys of recently persisted messages the context remembers.  ``None``
            (default): every key of the activation (about 155 bytes per distinct message, kept until the
            context is entered again: 1.5 GB for 10 million messages), which is what makes plain handlers
            exactly-once; but when every persistence handler belongs to a store that deduplicates by hash key
            itself (``deduplicates_by_hash_key``, e.g. ``SQLiteStore``), at most
            ``miniagents._dedup.DEFAULT_DEDUP_CACHE_SIZE`` (100,000, about 15 MB) recent keys, and the store
            keeps each message once.  An ``int`` (at least 1) bounds the keys for every handler: memory stays
            flat however long the context lives; a message is not handed over again while its key is among
            the last ``dedup_cache_size // 2`` keys added to the cache, but may be later, also to plain
            handlers.  :meth:`statistics` shows the keys held and the bound.

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
        dedup_cache_size: int | None = None,
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
        self._ledger = ErrorLedger()
        self._active = False
        self._stack: AsyncExitStack | None = None
        self._calls_tg: TaskGroupLike | None = None
        self._root_group: ScopedChildGroup | None = None  # asyncio: the root calls' group (see _spawn)
        self._service_tg: TaskGroupLike | None = None
        self._services_stop: anyio.Event | None = None
        self._native_trio = False
        self._open_calls: dict[CallLike, None] = {}
        # The keys queued for persistence (see miniagents/_dedup.py): every key of the activation, or the
        # current generation of a bounded cache, the older one (of activation _seen_before_in) and its size.
        self._seen: set[str] = set()
        self._seen_before: frozenset[str] | set[str] = NO_KEYS
        self._seen_before_in = 0
        self._dedup_requested = check_cache_size(dedup_cache_size)
        self._dedup_cache_size = cache_bound(self._dedup_requested, [*self._handlers, *self._batch_handlers])
        self._dedup_generation = generation_size(self._dedup_cache_size)
        self._install_persist()
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
        self._tokens: tuple[Token[ContextLike | None], Token[CallLike | None]] | None = None
        self._block_writers: list[WriterLike] = []
        self._block_writers_limit = 64
        self._fatal: BaseException | None = None
        self._body_scope: anyio.CancelScope | None = None
        # The thread and event loop of the current activation: the only ones that may use it.
        self._loop_identity: tuple[int, object, str | None] = (0, None, None)
        self._trio_token: object = None

    # -- public helpers -------------------------------------------------------------------------------------
    @classmethod
    def current(cls) -> MiniAgents:
        """Return the innermost active context.  Raises :class:`NoActiveContextError` when there is none."""
        context = current_context.get()
        if context is None:
            raise NoActiveContextError("no MiniAgents context is active")
        return cast("MiniAgents", context)  # the only ContextLike there is

    def attach(self) -> ContextAttachment:
        """Make this context the current one in the calling task, for a ``with`` or ``async with`` block.

        Enter the context once where the application starts (an ASGI lifespan, a trio nursery's parent task)
        and attach it in any other task of the same event loop, e.g. a web server's request handlers::

            ma = MiniAgents(store=SQLiteStore("app.db"))

            async def handler(request):
                async with ma.attach():
                    replies = research_agent.inquire(request.query)
                    ...

        Calls started inside the block are root calls of this context, exactly as if they were started in
        its own ``async with`` block: supervised by it (their errors are never lost: unobserved ones are
        raised when the context exits), cancelled if the context is cancelled, and sharing its HTTP pool, rate
        limiter, store and observers.  They do not end with the block: a call lives until it finishes, or
        until the block that scopes it ends (``async with agent.inquire(...) as replies:``).

        Raises:
            NoActiveContextError: the context is not active (not entered yet, or already exited).
            WrongEventLoopError: the calling thread, or its event loop, is not the one that entered the
                context.

        """
        return ContextAttachment(self)

    def _check_loop(self, what: str) -> None:
        """Raise unless the calling thread and its event loop are this activation's."""
        identity = loop_identity()
        if identity[0] != self._loop_identity[0]:
            raise WrongEventLoopError(
                f"{what}: this MiniAgents context runs in another thread; a context belongs to the thread "
                "and event loop that entered it (hand the work to that loop, e.g. with anyio.from_thread.run)"
            )
        if identity != self._loop_identity or _current_trio_token() is not self._trio_token:
            raise WrongEventLoopError(
                f"{what}: this MiniAgents context was entered in another event loop; a context belongs to "
                "the event loop that entered it"
            )

    def take_unobserved_errors(self, *, older_than: float = 0.0) -> list[BaseException]:
        """Remove and return the failures that no consumer has observed for *older_than* seconds or more.

        For a context that lives as long as a service: collect what nobody observed (e.g. log it from a
        periodic task) instead of holding it until the context exits.  Taken errors are not raised at exit
        and not observed by consumers that read them later.  A failure nobody observed holds no frames (its
        call is not kept alive): each returned error carries a note with its traceback as it was raised.
        """
        if older_than < 0:
            raise ValueError(f"older_than must be >= 0, got {older_than!r}")
        return self._ledger.take(older_than)

    def on_persist_message(self, handler: PersistHandler) -> PersistHandler:
        """Register *handler* (decorator form of the ``on_persist_message=`` option); returns it unchanged."""
        if not callable(handler):
            raise TypeError(f"on_persist_message handlers must be callables, got {handler!r}")
        self._handlers.append(handler)
        self._update_dedup()
        return handler

    def on_call_finished(self, handler: CallHandler) -> CallHandler:
        """Register *handler* (decorator form of the ``on_call_finished=`` option); returns it unchanged."""
        if not callable(handler):
            raise TypeError(f"on_call_finished handlers must be callables, got {handler!r}")
        self._call_handlers.append(handler)
        return handler

    @property
    def _persists(self) -> bool:
        """Whether any persistence handler is registered."""
        return bool(self._handlers or self._batch_handlers)

    @property
    def _records_calls(self) -> bool:
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
            unobserved_errors=len(self._ledger.unobserved()),
            dedup_keys=len(self._seen) + len(self._seen_before),
            dedup_cache_size=self._dedup_cache_size,
        )

    # -- TaskOwner ------------------------------------------------------------------------------------------
    _accepts_children = True

    def _spawn(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Start an internal task (a root call, a pump, a resolver) of the context.

        On asyncio it is a child of the context's root group (see :class:`ScopedChildGroup`), while the block
        runs; on trio, and during the rest of the exit, a task of the calls group.  Either way the block waits
        for it and a cancellation of the block reaches it.
        """
        root = self._root_group
        if root is not None:
            root.start_soon(fn, *args)
            return
        tg = self._calls_tg  # _spawn_in_calls_group, inlined: every root call on trio comes here
        if tg is None:
            raise NoActiveContextError("this MiniAgents context is not active")
        tg.start_soon(fn, *args)

    def _spawn_in_calls_group(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Start a task of the calls group itself (the watchers of asyncio call groups)."""
        tg = self._calls_tg
        if tg is None:
            raise NoActiveContextError("this MiniAgents context is not active")
        tg.start_soon(fn, *args)

    def _cancel_calls(self) -> None:
        """Cancel every call and internal task of the context, those started later included."""
        if self._calls_tg is not None:
            self._calls_tg.cancel_scope.cancel()
        if self._root_group is not None:
            self._root_group._cancel_children()

    def _drop_root_group(self) -> None:
        self._root_group = None

    def start_service(self, fn: Callable[[anyio.Event], Awaitable[None]]) -> None:
        """Run ``await fn(stop)`` in the context's service group, next to the persistence worker.

        For a shared resource that must be held open by a task of its own (an async context manager that owns
        a task group, such as an MCP client session): *fn* enters it, serves it until ``stop`` is set and then
        leaves it.  ``stop`` is set when the block exits, after every call of the context finished; the
        service group is cancelled with the block.  An exception escaping *fn* (other than the cancellation)
        is not raised in the service group: it is kept as an unobserved error of the context (raised when the
        block exits), so a failing service never cancels the calls.

        Raises:
            NoActiveContextError: the context is not active, or its calls have finished already (it is exiting).

        """
        tg, stop = self._service_tg, self._services_stop
        if tg is None or stop is None or stop.is_set():
            raise NoActiveContextError(
                "start_service() needs an active MiniAgents context that is not exiting"
            )

        async def service() -> None:
            try:
                await fn(stop)
            except Exception as error:
                self._ledger.record_error(error)

        tg.start_soon(service)

    def _stop_services(self) -> None:
        stop = self._services_stop
        if stop is not None:
            stop.set()

    def _register_open_call(self, call: CallLike) -> None:
        """Remember a call whose input is open (finished when the block exits)."""
        self._open_calls[call] = None

    def _forget_open_call(self, call: CallLike) -> None:
        """Forget a call whose input was finished."""
        self._open_calls.pop(call, None)

    # -- persistence ----------------------------------------------------------------------------------------
    def _persist(self, message: Message) -> None:
        """Queue *message* (and, first, the messages nested in it) for the handlers, once per hash key."""
        # Called for every message appended to every sequence: the common cases return first.  This is the
        # exact mode (every key kept); a context with a bounded cache has _persist_bounded as ``_persist``.
        activation = self._activation
        if message._persisted_in == activation or not (self._handlers or self._batch_handlers):
            return
        set_persisted_in(message, activation)
        key = message.hash_key
        seen = self._seen
        if key in seen:
            return
        seen.add(key)
        self._queue_new(message)

    def _queue_new(self, message: Message) -> None:
        """Queue a message seen for the first time, after the messages nested in it (both ``_persist`` modes)."""
        extra = message._extra
        # It may hold messages when it has extra fields or declared ones.  (``extra is EMPTY`` first: the
        # truth test of a FrozenDict is a Python-level __len__ call.)
        if (extra is not EMPTY and extra) or _CONTENT_ONLY_PREFIX[type(message)] is None:
            for sub in message.sub_messages():
                self._persist(sub)
        self._persist_queue.append(message)  # _enqueue, inlined
        event = self._persist_event
        if event is not None:
            self._persist_event = None
            event.set()

    def _persist_bounded(self, message: Message) -> None:
        """:meth:`_persist` with a bounded cache of recent keys (miniagents/_dedup.py); correct in both modes.

        The instance's ``_persist`` while the cache is bounded and a handler is registered (handlers are never
        removed, so it skips that check; sequences keep the method they were created with, so this one also
        stays right once every key is kept: the older generation is empty then and the generation size is
        never reached).  Otherwise the same steps as :meth:`_persist`.
        """
        activation = self._activation
        if message._persisted_in == activation:
            return
        set_persisted_in(message, activation)
        key = message.hash_key
        seen = self._seen
        if key in seen:
            return
        seen.add(key)
        # Also look in the older generation (of this activation), and rotate when the current one is full.
        if key in self._seen_before or len(seen) >= self._dedup_generation:
            recent = key in self._seen_before and self._seen_before_in == activation
            if len(seen) >= self._dedup_generation:
                self._seen_before, self._seen_before_in, self._seen = seen, activation, set()
            if recent:
                return
        self._queue_new(message)

    def _update_dedup(self) -> None:
        """Decide the bound on remembered keys again, after a persistence handler was added."""
        bound = cache_bound(self._dedup_requested, [*self._handlers, *self._batch_handlers])
        if bound == self._dedup_cache_size:
            self._install_persist()  # the first handler of an explicitly bounded context
            return
        generation = generation_size(bound)
        if bound is None:
            # A plain handler needs every key from now on: keep the recent ones and those of the messages still
            # queued (a dropped key of a queued message would let its next copy reach the new handler again).
            seen = self._seen
            if self._seen_before_in == self._activation:
                seen.update(self._seen_before)
            for item in itertools.chain(self._persist_queue, self._persist_batch):
                if isinstance(item, Message):
                    seen.add(item.hash_key)
        elif len(self._seen) >= generation:
            self._seen = set()  # the store keeps each message once: starting over loses nothing
        self._seen_before = NO_KEYS
        self._dedup_cache_size = bound
        self._dedup_generation = generation
        self._install_persist()

    def _install_persist(self) -> None:
        # An instance attribute shadows the method: what sequences take as ``context._persist``.
        if self._dedup_cache_size is None or not (self._handlers or self._batch_handlers):
            self.__dict__.pop("_persist", None)
        else:
            self.__dict__["_persist"] = self._persist_bounded

    def _record_call(self, record: CallRecord) -> None:
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
                            self._ledger.record_error(_with_handler_note(exc, handler, message))
            self._persist_pos = stop

    async def _call_handler(self, handler: Callable[[Any], Any], item: CallRecord | list[Message]) -> None:
        try:
            result = handler(item)
            if result is not None and inspect.isawaitable(result):
                await result
        except Exception as exc:
            self._ledger.record_error(_with_handler_note(exc, handler, item))

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def __aenter__(self) -> MiniAgents:
        if self._active:
            raise MiniAgentsError("this MiniAgents context is already active")
        self._active = True  # at once: a second task entering concurrently is refused
        self._ledger = ErrorLedger()
        self._fatal = None
        self._block_writers = []
        self._seen = set()
        self._activation = next(_activations)  # marks the messages this activation queued already
        self._persist_closing = False
        self.run_id = uuid.uuid4().hex
        self.observers = resolve_observers(self._call_observers, self._tracing)
        self._loop_identity = loop_identity()
        self._trio_token = _current_trio_token()
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
            self._native_trio = sniffio.current_async_library() == "trio"
            service_tg = await stack.enter_async_context(open_task_group(self._native_trio))
            service_tg.start_soon(self._persistence_worker)
            stack.callback(self._close_persistence)
            self._service_tg, self._services_stop = service_tg, anyio.Event()
            stack.callback(self._stop_services)
            self._calls_tg = await stack.enter_async_context(open_task_group(self._native_trio))
            if not self._native_trio:
                stack.callback(self._drop_root_group)  # after it exited: later tasks go to the calls group
                self._root_group = await stack.enter_async_context(
                    ScopedChildGroup(self._spawn_in_calls_group, watched=True)
                )
            stack.callback(self._finish_open_inputs)
            # Cancelled only by a KeyboardInterrupt or SystemExit escaping an agent (see _fatal_error).
            self._body_scope = stack.enter_context(anyio.CancelScope())
        except BaseException:
            await stack.aclose()
            context_token, call_token = self._tokens
            current_context.reset(context_token)
            current_call.reset(call_token)
            self._tokens = None
            self._service_tg = self._services_stop = None
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
            self._cancel_calls()
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
            self._calls_tg = self._root_group = None
            self._service_tg = self._services_stop = None
            self._body_scope = None
            self._active = False
        fatal = self._fatal
        if fatal is not None:
            self._fatal = None
            raise fatal  # bare, on both backends, whatever else happened
        if body_failed:
            assert incoming is not None
            raised = incoming if raised is None else BaseExceptionGroup("errors on exit", [incoming, raised])
        errors = [e for e in self._ledger.unobserved() if e is not raised]
        if errors and raised is not None and _is_cancellation(raised):
            # Cancelled from outside (move_on_after, fail_after, a cancelled nursery): the cancellation must
            # reach its scope as it is, or fail_after would lose its TimeoutError.  The errors are logged.
            self._ledger.add_reports(errors)
            for error in errors:
                _log.error(_CANCELLED_NOTE, exc_info=error)
            errors = []
        if not errors:
            if raised is None:
                return incoming is not None  # a cancellation that ended at our own scopes
            if raised is incoming:
                return False  # re-raised by Python as it was
            raise raised
        self._ledger.add_reports(errors)
        for error in errors:
            _add_note(error, _NOTE)
        if raised is None:
            if len(errors) == 1:
                raise errors[0]
            raise ExceptionGroup("errors in agents that no consumer observed", errors)  # type: ignore[type-var]
        raise BaseExceptionGroup("errors in agents that no consumer observed", [raised, *errors])

    def _finish_open_inputs(self) -> None:
        """The block's body has ended: finish the inputs it left open, end the writers it left open.

        An open input is finished (what was sent is the whole input); an open writer is failed with
        :class:`AgentCallCancelledError` after what it sent, as a call's open writers are when its code ends:
        either way nobody waits for them forever.
        """
        for call in list(self._open_calls):
            call.finish()
        writers, self._block_writers = self._block_writers, []
        for writer in writers:
            if not writer.closed:
                writer.fail(
                    AgentCallCancelledError("the MiniAgents block ended without finishing this stream")
                )

    def _track_block_writer(self, writer: WriterLike) -> None:
        """Remember a writer opened outside any call, to end it at exit if it is still open then."""
        writers = self._block_writers
        writers.append(writer)
        if len(writers) > self._block_writers_limit:  # amortised: a long-lived context forgets closed ones
            writers[:] = [w for w in writers if not w.closed]
            self._block_writers_limit = max(64, 2 * len(writers))

    def _fatal_error(self, error: BaseException) -> None:
        """A KeyboardInterrupt, SystemExit (any BaseException but a cancellation) escaped an agent.

        It is not a failure of that call: like Python does for the whole program, it cancels everything in
        the context, the block's body included, and is raised as it is (the first one) when the block exits.
        """
        if self._fatal is None:
            self._fatal = error
        self._cancel_calls()
        if self._body_scope is not None:
            self._body_scope.cancel()

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


def _is_cancellation(error: BaseException) -> bool:
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(error, BaseExceptionGroup):
        return error.split(cancelled)[1] is None
    return isinstance(error, cancelled)


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
