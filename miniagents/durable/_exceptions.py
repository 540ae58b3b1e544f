"""The errors of durable runs.

``DurableError`` (a :class:`~miniagents.MiniAgentsError`) is the root:

* ``DurableConfigError`` — the runtime cannot start or is used wrongly (no runtime active, a second one, an
  unregistered or duplicate alias, a DBOS version outside the supported range);
* ``DurableKwargsError`` (also a ``TypeError``) — a call's kwargs cannot cross the durable boundary (not JSON
  data, or a secret); raised at call time, naming the agent and the kwarg's path;
* ``DurableCallError`` — a durable call failed (in this process or in a worker); it names the agent, the
  workflow id and the original error type and message (secrets were redacted where the error arose);
* ``ReplayMismatchError`` — a resumed call made another LLM request than the one recorded at that point
  (the agent's requests are not deterministic in order: make concurrent LLM sub-agents durable themselves).
"""

from __future__ import annotations

from miniagents._exceptions import MiniAgentsError

__all__ = [
    "DurableCallError",
    "DurableConfigError",
    "DurableError",
    "DurableKwargsError",
    "ReplayMismatchError",
]


class DurableError(MiniAgentsError):
    """The root of the durable-run errors."""


class DurableConfigError(DurableError):
    """The durable runtime cannot start, or is used without being active, or an agent alias is wrong."""


class DurableKwargsError(DurableError, TypeError):
    """A call's kwargs cannot be recorded: not JSON data, or a secret (the message names agent and path)."""


class DurableCallError(DurableError):
    """A durable call ended with an error; ``error_type`` and ``workflow_id`` say which and where."""

    def __init__(self, message: str, *, alias: str, workflow_id: str, error_type: str) -> None:
        super().__init__(message)
        self.alias = alias
        self.workflow_id = workflow_id
        self.error_type = error_type


class ReplayMismatchError(DurableError):
    """A resumed call asked another LLM request than the one recorded at the same point of its run."""
