"""Call observers: code told when each agent call starts, runs and ends (tracing, progress, metrics).

An observer sees every call of the context it is given to, however deeply nested.  The runtime calls it at
three points, always synchronously and never concurrently for one call:

``call_started(call)``
    In the task of whoever started the call (``inquire()`` / ``initiate_call()``), before the call's task
    exists.  The value it returns is the observer's per-call state, handed back at the two later points.
    ``call.parent`` is the call that started this one (``None`` outside any agent).
``call_running(call, state)``
    First thing in the call's own task, before any agent code.  Context variables set here are seen by the
    agent function and every task the call starts (``ctx.start_soon`` children, pumps, sub-calls, tools), and
    by nothing outside the call.  Not called for a call cancelled before it started.
``call_finished(call, state, outcome, error)``
    Once per call, when its reply sequence is complete: ``outcome`` is ``"completed"``, ``"failed"`` (with
    *error*) or ``"cancelled"``; ``call.statistics()`` has the final message counts.

An exception from ``call_started`` is raised to the code that started the call (the call does not start); one
from the other two points is recorded and raised when the ``MiniAgents`` block exits, like a persistence
handler's error.  With no observer the runtime does no work for them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from miniagents._records import CallOutcome

__all__ = ["TRACING_PLUGIN", "CallObserver", "resolve_observers"]

#: The module whose ``tracing_observer(option)`` makes the observer for ``MiniAgents(tracing=...)``.
TRACING_PLUGIN = "miniagents.tracing"


class CallObserver(Protocol):
    """Told when each agent call starts, runs and ends (see the module docstring for the guarantees).

    *call* is the :class:`~miniagents.AgentCall`.  It is typed ``Any`` here because this layer sits below the
    agents (see the layer rule in ``miniagents/__init__.py``): an observer may annotate it ``AgentCall``.
    """

    def call_started(self, call: Any) -> Any:
        """The call was created; return the per-call state passed to the next two methods."""

    def call_running(self, call: Any, state: Any) -> None:
        """The call's task started (runs in that task, before the agent function)."""

    def call_finished(self, call: Any, state: Any, outcome: CallOutcome, error: BaseException | None) -> None:
        """The call ended with *outcome* (*error* is the failure of a ``"failed"`` call)."""


def resolve_observers(observers: Iterable[CallObserver], tracing: Any) -> tuple[CallObserver, ...]:
    """The observers of one activation of a context: the user's, plus OpenTelemetry tracing when it is on.

    *tracing* is the ``MiniAgents(tracing=...)`` option: ``False`` never traces; ``None`` (the default) traces
    when OpenTelemetry is imported and a tracer provider is configured; ``True`` or a tracer provider always
    does (``True`` uses the global provider).  The cheap test comes first: without ``opentelemetry`` imported
    nothing else is looked at.
    """
    result = tuple(observers)
    if tracing is False or (tracing is None and "opentelemetry.trace" not in sys.modules):
        return result
    # The one way the core reaches a plug-in: the tracing plug-in's observer factory, looked up by name (the
    # core imports no plug-in module; see the layer rule in miniagents/__init__.py).
    plugin = importlib.import_module(TRACING_PLUGIN)
    observer = plugin.tracing_observer(tracing)
    return result if observer is None else (*result, observer)
