"""Where new tasks go: the current ``MiniAgents`` context and the current agent call.

Both live in context variables, which anyio (on trio and asyncio alike) copies into every task it spawns, so an
agent's child tasks and the calls it starts see the call that started them without any argument passing.
A new task is always a child of the innermost live scope: the current agent call if there is one, otherwise
the current ``MiniAgents`` context.  There is no global fallback, so no task can outlive its owner.
"""

from __future__ import annotations

import asyncio
import sys
from asyncio import _get_running_loop
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from threading import get_ident
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import sniffio
import trio

from miniagents._exceptions import NoActiveContextError

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from miniagents._ledger import ErrorLedger
    from miniagents._messages import Message


class TaskOwner(Protocol):
    """Something that can start a child task which it waits for before it finishes."""

    def _spawn(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Start ``fn(*args)`` as a child task.  *fn* must not raise (errors are routed by the caller)."""

    def _register_open_call(self, call: CallLike) -> None:
        """Remember a call started here whose input is still open (finished when this owner ends)."""

    def _forget_open_call(self, call: CallLike) -> None:
        """Forget a call whose input was finished."""


class WriterLike(Protocol):
    """The producer side of a stream, as its owner ends it (the channels' writers fit)."""

    @property
    def closed(self) -> bool:
        """Whether the stream was finished or failed."""

    def close(self) -> None:
        """Finish the stream with what it has."""

    def fail(self, error: BaseException) -> None:
        """End the stream with *error*."""


class ContextLike(TaskOwner, Protocol):
    """What the layers below the context know of a ``MiniAgents`` context (``_context.MiniAgents`` fits).

    Lower layers (channels, observers) name this Protocol, never the concrete class, so that the context can
    import them and not the other way round.
    """

    _ledger: ErrorLedger
    errors_as_messages: bool
    _activation: int
    _loop_identity: tuple[int, object, str | None]

    @property
    def _persists(self) -> bool:
        """Whether messages go to persistence handlers."""

    def _persist(self, message: Message) -> None:
        """Hand *message* (and the messages nested in it) to the persistence handlers."""

    def _track_block_writer(self, writer: WriterLike) -> None:
        """Remember a writer opened outside any call, to end it at exit if it is still open then."""

    def _fatal_error(self, error: BaseException) -> None:
        """A KeyboardInterrupt or SystemExit escaped an agent: stop the context."""

    def _check_loop(self, what: str) -> None:
        """Raise if this is not the thread and event loop the context was entered in."""


class AgentLike(Protocol):
    """What the layers below the agents know of an agent (``MiniAgent`` fits)."""

    @property
    def alias(self) -> str:
        """The agent's name."""


class CallLike(TaskOwner, Protocol):
    """What the layers below the agents know of an agent call (``_calls.AgentCall`` fits)."""

    @property
    def agent(self) -> AgentLike:
        """The agent called."""

    @property
    def context(self) -> ContextLike:
        """The context the call runs in."""

    @property
    def parent(self) -> CallLike | None:
        """The call that started this one (``None`` outside any agent)."""

    @property
    def _accepts_children(self) -> bool:
        """Whether the call still runs and takes new child tasks."""

    def cancel(self) -> None:
        """Cancel the call."""

    def finish(self) -> None:
        """Finish the call's input: nothing more will be sent."""

    def _track_writer(self, writer: WriterLike) -> None:
        """Remember an open writer, failed if still open when the call ends."""

    def _untrack_writer(self, writer: WriterLike) -> None:
        """Forget a writer that finished or failed."""

    def _end_writer(self, writer: WriterLike, error: BaseException) -> None:
        """End a stream the call was writing when *error* stopped it."""

    def _fail(self, error: BaseException, *, passed_on: bool = False) -> None:
        """Fail the call with *error*."""


class CancelScopeLike(Protocol):
    """What the runtime uses of a cancel scope (anyio's and trio's both fit)."""

    def cancel(self) -> None:
        """Cancel everything inside the scope."""


class TaskGroupLike(Protocol):
    """What the runtime uses of a task group (anyio's ``TaskGroup`` and trio's ``Nursery`` both fit)."""

    @property
    def cancel_scope(self) -> CancelScopeLike:
        """The scope around the group's tasks."""

    def start_soon(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Start ``fn(*args)`` as a task of the group."""


def open_task_group(native_trio: bool) -> AbstractAsyncContextManager[TaskGroupLike]:
    """Open a task group: trio's own nursery on trio, anyio's task group elsewhere.

    On trio, anyio's cancel scopes *are* trio's, so a nursery has exactly the semantics of anyio's task group
    there, without the per-task bookkeeping anyio adds on top (the hot path of every agent call).
    """
    if native_trio:
        return trio.open_nursery()
    return anyio.create_task_group()  # type: ignore[return-value]


class ScopedChildGroup:
    """A call's task group on asyncio: a cancel scope of its own, children as plain asyncio tasks it waits for.

    anyio's asyncio task group costs more per call than everything else a short call does (its own scope,
    task bookkeeping, a checkpoint on exit), and so does a task started in one (a task handle, a cancel scope
    and a wrapper coroutine per task).  Most calls start no child at all, so on asyncio a call opens only this:
    the agent function runs inside :attr:`host_scope`; each child is a plain asyncio task running inside a
    cancel scope of its own that this group owns.  It keeps the guarantees of a task group that the runtime
    relies on:

    * ``__aexit__`` returns only after every child finished (so a call's replies end after its children, and
      the ``MiniAgents`` block, which waits for the calls it started, waits for every child below them);
    * ``cancel_scope.cancel()`` cancels the body and every child, also children started afterwards;
    * a cancellation of the task running the group (an outer scope) cancels the children too, and the
      group still waits for them (shielded) before the cancellation propagates;
    * a cancellation of the group that runs this group's task (the parent call's) reaches this group's children
      at once, as a cancelled nursery reaches its grandchildren: they do not wait for this task to notice it
      (which a shielded wait, e.g. for a child's cleanup, would delay forever);
    * a cancellation of the context's calls group (or of any scope around the ``MiniAgents`` block) reaches
      every child at once too, whatever the state of the call above it: a group whose own task runs in that
      calls group starts a *watcher* task there with its first child, which carries such a cancellation to
      every group below it and ends when the group exits;
    * a child that was cancelled makes ``__aexit__`` a cancellation point, as the cancelled child's exception
      makes a nursery's exit raise.

    The ``MiniAgents`` context on asyncio opens one too, around its block (*watched*: it keeps a watcher in
    the calls group whatever task opens it): its children are the root calls and the context's other internal
    tasks, so a root call costs an asyncio task rather than a task of anyio's group (a task handle, a cancel
    scope, two events and a wrapper coroutine each), and the root calls' own groups nest in it (cancelling it
    reaches them through ``_subgroups``, without a watcher per call).

    Depth costs are linear: cancelling reaches the groups below through an explicit stack (no recursion), and
    the children are outside anyio's scope tree, whose cancellation re-walks every task below a cancelled scope
    on every event-loop round until they have all finished (a chain N deep unwinds in N rounds: N² work).

    Children must not raise: the runtime routes their errors itself (``_guard_child``, pump guards, calls).
    """

    __slots__ = (
        "_child_cancelled",
        "_child_scopes",
        "_ended",
        "_idle",
        "_parent",
        "_running",
        "_spawn",
        "_subgroups",
        "_visible",
        "_watched",
        "cancelled",
        "host_scope",
    )

    def __init__(self, spawn: Callable[..., None], *, watched: bool = False) -> None:
        self._spawn = spawn  # the context's calls group: for the watcher
        self.host_scope = anyio.CancelScope()
        self._child_scopes: set[anyio.CancelScope] = set()
        self._running = 0
        self._idle: anyio.Event | None = None
        self.cancelled = False
        self._child_cancelled = False
        # The group whose child runs this group's task, and the groups opened by this group's children.
        self._parent: ScopedChildGroup | None = None
        self._subgroups: set[ScopedChildGroup] | None = None
        # Whether this group keeps a watcher (its task is in anyio's scope tree: a task of the calls group, not
        # a child of a group; or it is *watched*), and the event that ends the watcher (made by the first child).
        self._visible = watched
        self._watched = watched
        self._ended: anyio.Event | None = None

    # TaskGroupLike: the group is its own cancel scope.
    @property
    def cancel_scope(self) -> ScopedChildGroup:
        """The group itself (``cancel()`` covers the body and every child)."""
        return self

    def cancel(self) -> None:
        """Cancel the body and every child, including children started later."""
        self.host_scope.cancel()
        self._cancel_children()

    def _cancel_children(self) -> None:
        """Cancel the children of this group and of every group nested in it, at any depth.

        Iterative (an explicit stack, no recursion): a chain of calls thousands deep is one group per level,
        and a recursion error half-way would leave the deep part running with its flag already set.  Each
        group is visited once: a group already cancelled started its later children cancelled, and so did
        every group below it (``__aenter__`` copies the flag down).
        """
        if self.cancelled:
            return
        pending = [self]
        while pending:
            group = pending.pop()
            if group.cancelled:
                continue
            group.cancelled = True
            for scope in group._child_scopes:
                scope.cancel()
            if group._subgroups:
                pending.extend(group._subgroups)

    def start_soon(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Start ``fn(*args)`` as a child: an asyncio task inside a cancel scope of this group."""
        scope = anyio.CancelScope()
        if self.cancelled:
            scope.cancel()
        if self._visible and self._ended is None:
            self._start_watcher()
        self._child_scopes.add(scope)
        self._running += 1
        try:
            _start_task(self._run_child(scope, fn, args))
        except BaseException:
            self._child_done(scope)
            raise

    def _start_watcher(self) -> None:
        self._ended = anyio.Event()
        self._spawn(self._watch, self._ended)

    async def _watch(self, ended: anyio.Event) -> None:
        # A task of the context's calls group, next to this group's own task: whatever cancels that group (or
        # a scope around it) cancels this task too, and it passes the cancellation on to the children below.
        try:
            await ended.wait()
        except anyio.get_cancelled_exc_class():
            self._cancel_children()
            raise

    async def _run_child(
        self, scope: anyio.CancelScope, fn: Callable[..., Coroutine[Any, Any, Any]], args: tuple[Any, ...]
    ) -> None:
        _enclosing_group.set(self)  # this task's context only: a group opened in it nests in this one
        try:
            with scope:
                await fn(*args)
            if scope.cancelled_caught:
                self._child_cancelled = True
        except anyio.get_cancelled_exc_class():
            self._child_cancelled = True  # a native cancellation (the loop shutting down): it propagates
            raise
        except Exception as exc:  # pragma: no cover - a runtime bug: children route their own errors
            self._spawn(_raise, exc)  # fails the context's calls group, as a failed task of it would
        finally:
            self._child_done(scope)
            _child_tasks.discard(asyncio.current_task())

    def _child_done(self, scope: anyio.CancelScope) -> None:
        self._child_scopes.discard(scope)
        self._running -= 1
        if not self._running and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def _wait_for_children(self) -> None:
        while self._running:
            idle = self._idle = anyio.Event()
            await idle.wait()

    async def __aenter__(self) -> ScopedChildGroup:
        self._visible = self._watched or asyncio.current_task() not in _child_tasks
        parent = _enclosing_group.get()
        if parent is not None and parent._running:  # (none running: a stale context, not a child of it)
            self._parent = parent
            if parent._subgroups is None:
                parent._subgroups = set()
            parent._subgroups.add(self)
            if parent.cancelled:
                self.cancelled = True  # this task is in a cancelled tree: so are its children
        self.host_scope.__enter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        try:
            return await self._exit(exc_type, exc, tb)
        finally:
            parent = self._parent
            if parent is not None and parent._subgroups is not None:
                parent._subgroups.discard(self)
                self._parent = None
            if self._ended is not None:
                self._ended.set()  # every child has finished: the watcher's work is done

    async def _exit(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        # The host scope is never cancelled here: its __exit__ must tell a cancellation it delivered itself
        # (the call was cancelled: swallowed) from an outer one (propagated).
        if exc is not None:
            self._cancel_children()  # as a task group does when its body raises (a cancellation included)
        if self._running or self._child_cancelled:
            try:
                await self._wait_for_children()
                # asyncio delivers a cancellation to a waiting task in a later loop round: children cancelled
                # by the same outer scope can finish (and wake us) first.  Do not miss it.
                await anyio.lowlevel.checkpoint_if_cancelled()
            except anyio.get_cancelled_exc_class() as cancelled:
                self._cancel_children()
                with anyio.CancelScope(shield=True):
                    await self._wait_for_children()
                if exc is None:  # the cancellation is the exception now, unless the host scope swallows it
                    if self.host_scope.__exit__(type(cancelled), cancelled, cancelled.__traceback__):
                        return True
                    raise
        return self.host_scope.__exit__(exc_type, exc, tb)


#: The live children of every scoped child group: asyncio keeps only weak references to tasks.  A group opened
#: in a task that is not one of them runs in the context's calls group (anyio's scope tree) and keeps a watcher.
_child_tasks: set[asyncio.Task[Any]] = set()


def _start_task(coro: Coroutine[Any, Any, None]) -> None:
    """Start *coro* as an asyncio task now (not eagerly, whatever the loop's task factory)."""
    try:
        loop = asyncio.get_running_loop()
        factory = loop.get_task_factory()
        if factory is None or getattr(factory, "__code__", None) is _EAGER_FACTORY_CODE:
            task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop)  # eager: it would run inside the caller
        else:
            task = loop.create_task(coro)
    except BaseException:
        coro.close()  # never started: no "never awaited" warning
        raise
    _child_tasks.add(task)


_EAGER_FACTORY_CODE = getattr(getattr(asyncio, "eager_task_factory", None), "__code__", None)  # Python 3.12+


async def _raise(exc: BaseException) -> None:  # pragma: no cover - see ScopedChildGroup._run_child
    raise exc


class CallNursery:
    """A call's task group on trio: trio's nursery, whose cancellation leaves it as one flat ``trio.Cancelled``.

    With strict exception groups, a trio nursery raises what its body and children raised wrapped in a
    ``BaseExceptionGroup``.  A call's task is a child of its parent call's nursery, so a chain of calls N deep
    cancelled from outside would raise a group nested N deep, and trio itself takes ``repr()`` of a child task's
    exception when the task ends (``Nursery._child_finished``): past ~330 levels that ``repr`` raises
    ``RecursionError`` inside trio's run loop (``TrioInternalError``).  A group holding nothing but
    cancellations is therefore re-raised as one of them (the body's own when it is one): outer scopes catch it
    exactly as they would the group, and the nesting stays one level deep whatever the depth of the chain.
    Any other exception (``KeyboardInterrupt``, a group holding one) propagates as trio raised it.
    """

    __slots__ = ("_manager",)

    def __init__(self) -> None:
        self._manager = trio.open_nursery()

    def __aenter__(self) -> Coroutine[Any, Any, trio.Nursery]:
        return self._manager.__aenter__()  # no coroutine of our own on the way in: this is every call's path

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        try:
            return await self._manager.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            flat = _only_cancellation(group, exc)
            if flat is None:
                raise
        if flat is not exc:  # a child's: its traceback (other tasks' frames) would grow at every level
            flat = flat.with_traceback(None)
        # Raised outside the handler: no implicit __context__ chains the groups of the levels below together.
        raise flat


def _only_cancellation(
    group: BaseExceptionGroup[BaseException], preferred: BaseException | None
) -> BaseException | None:
    """Return one ``trio.Cancelled`` of *group* (*preferred* if it is one) if that is all it holds, else None."""
    found: BaseException | None = None
    pending: list[BaseException] = [group]
    while pending:  # iterative: the group may come from user code and be nested deeply
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif not isinstance(exc, trio.Cancelled):
            return None
        elif found is None or exc is preferred:
            found = exc
    return found


def open_call_group(
    native_trio: bool, spawn: Callable[..., None]
) -> AbstractAsyncContextManager[TaskGroupLike]:
    """Open the task group of one agent call: :class:`CallNursery` on trio, :class:`ScopedChildGroup` on asyncio.

    Both are depth-safe: cancelling a chain of calls thousands deep recurses nowhere (neither in the runtime
    nor in trio's handling of the chain's exception).
    """
    if native_trio:
        return CallNursery()
    return ScopedChildGroup(spawn)


#: The scoped child group whose child is the current task (asyncio only): a call group opened in it nests in it.
_enclosing_group: ContextVar[ScopedChildGroup | None] = ContextVar("miniagents_enclosing_group", default=None)
current_context: ContextVar[ContextLike | None] = ContextVar("miniagents_context", default=None)
current_call: ContextVar[CallLike | None] = ContextVar("miniagents_call", default=None)


def require_context(what: str) -> ContextLike:
    """Return the active ``MiniAgents`` context or raise :class:`NoActiveContextError` naming *what*."""
    context = current_context.get()
    if context is None:
        raise NoActiveContextError(
            f"{what} needs an active MiniAgents context: run it inside `async with MiniAgents():` "
            "or `MiniAgents().run(...)`"
        )
    return context


def current_owner(what: str) -> tuple[ContextLike, TaskOwner]:
    """Return the active context and the innermost live owner for a new child task."""
    call = current_call.get()
    if call is not None and call._accepts_children:
        context = call.context
        owner: TaskOwner = call
    else:
        context = owner = require_context(what)
    # Context variables reach other threads (anyio.to_thread copies them) and loops nested in this thread:
    # loop_identity(), inlined (every call start passes here).
    thread, loop, library = context._loop_identity
    if get_ident() != thread or _get_running_loop() is not loop or _sniffio_local.name != library:
        context._check_loop(what)
    return context, owner


def loop_identity() -> tuple[int, object, str | None]:
    """Which thread and event loop this is: the thread id, asyncio's running loop, sniffio's thread-local name.

    Cheap enough for every call start, and it tells apart another thread, another asyncio loop, an asyncio loop
    nested in a trio run (same name, another loop) and a trio run nested in an asyncio loop (another name).
    """
    return (get_ident(), _get_running_loop(), _sniffio_local.name)


_sniffio_local = sniffio.thread_local
