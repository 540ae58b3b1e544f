"""Where new tasks go: the current ``MiniAgents`` context and the current agent call.

Both live in context variables, which anyio (on trio and asyncio alike) copies into every task it spawns, so an
agent's child tasks and the calls it starts see the call that started them without any argument passing.
A new task is always a child of the innermost live scope: the current agent call if there is one, otherwise
the current ``MiniAgents`` context.  There is no global fallback, so no task can outlive its owner.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import trio

from miniagents._exceptions import NoActiveContextError

if TYPE_CHECKING:
    from miniagents._agents import AgentCall
    from miniagents._context import MiniAgents


class TaskOwner(Protocol):
    """Something that can start a child task which it waits for before it finishes."""

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Start ``fn(*args)`` as a child task.  *fn* must not raise (errors are routed by the caller)."""

    def register_open_call(self, call: AgentCall) -> None:
        """Remember a call started here whose input is still open (finished when this owner ends)."""

    def forget_open_call(self, call: AgentCall) -> None:
        """Forget a call whose input was finished."""


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
    """A call's task group on asyncio: a cancel scope of its own, children run in the context's task group.

    anyio's asyncio task group costs more per call than everything else a short call does (its own scope,
    task bookkeeping, a checkpoint on exit).  Most calls start no child at all, so on asyncio a call opens
    only this: the agent function runs inside :attr:`host_scope`; each child task is started in *spawn* (the
    context's calls group) inside a cancel scope of its own that this group owns.  It keeps the guarantees
    of a task group that the runtime relies on:

    * ``__aexit__`` returns only after every child finished (so a call's replies end after its children);
    * ``cancel_scope.cancel()`` cancels the body and every child, also children started afterwards;
    * a cancellation of the task running the group (an outer scope) cancels the children too, and the
      group still waits for them (shielded) before the cancellation propagates;
    * a cancellation of the group that runs this group's task (the parent call's) reaches this group's children
      at once, as a cancelled nursery reaches its grandchildren: they do not wait for this task to notice it
      (which a shielded wait, e.g. for a child's cleanup, would delay forever);
    * a child that was cancelled makes ``__aexit__`` a cancellation point, as the cancelled child's exception
      makes a nursery's exit raise.

    Children must not raise: the runtime routes their errors itself (``_guard_child``, pump guards, calls).
    """

    __slots__ = (
        "_child_cancelled",
        "_child_scopes",
        "_idle",
        "_parent",
        "_running",
        "_spawn",
        "_subgroups",
        "cancelled",
        "host_scope",
    )

    def __init__(self, spawn: Callable[..., None]) -> None:
        self._spawn = spawn
        self.host_scope = anyio.CancelScope()
        self._child_scopes: set[anyio.CancelScope] = set()
        self._running = 0
        self._idle: anyio.Event | None = None
        self.cancelled = False
        self._child_cancelled = False
        # The group whose child runs this group's task, and the groups opened by this group's children.
        self._parent: ScopedChildGroup | None = None
        self._subgroups: set[ScopedChildGroup] | None = None

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
        if self.cancelled:
            return  # children started since were started cancelled; so were the subgroups' children
        self.cancelled = True
        for scope in self._child_scopes:
            scope.cancel()
        if self._subgroups:
            for group in list(self._subgroups):
                group._cancel_children()

    def start_soon(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Start ``fn(*args)`` as a child: a task of the context's group, inside a scope of this group."""
        scope = anyio.CancelScope()
        if self.cancelled:
            scope.cancel()
        self._child_scopes.add(scope)
        self._running += 1
        try:
            self._spawn(self._run_child, scope, fn, args)
        except BaseException:
            self._child_done(scope)
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
            self._child_cancelled = True  # cancelled by an outer scope (the context's): it propagates
            raise
        finally:
            self._child_done(scope)

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


def open_call_group(
    native_trio: bool, spawn: Callable[..., None]
) -> AbstractAsyncContextManager[TaskGroupLike]:
    """Open the task group of one agent call: trio's nursery on trio, a :class:`ScopedChildGroup` on asyncio."""
    if native_trio:
        return trio.open_nursery()
    return ScopedChildGroup(spawn)


#: The scoped child group whose child is the current task (asyncio only): a call group opened in it nests in it.
_enclosing_group: ContextVar[ScopedChildGroup | None] = ContextVar("miniagents_enclosing_group", default=None)
current_context: ContextVar[MiniAgents | None] = ContextVar("miniagents_context", default=None)
current_call: ContextVar[AgentCall | None] = ContextVar("miniagents_call", default=None)


def require_context(what: str) -> MiniAgents:
    """Return the active ``MiniAgents`` context or raise :class:`NoActiveContextError` naming *what*."""
    context = current_context.get()
    if context is None:
        raise NoActiveContextError(
            f"{what} needs an active MiniAgents context: run it inside `async with MiniAgents():` "
            "or `MiniAgents().run(...)`"
        )
    return context


def current_owner(what: str) -> tuple[MiniAgents, TaskOwner]:
    """Return the active context and the innermost live owner for a new child task."""
    call = current_call.get()
    if call is not None and call.accepts_children:
        return call.context, call
    context = require_context(what)
    return context, context
