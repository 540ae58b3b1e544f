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

    cancelled_caught: bool

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
