"""Durable agent graphs on DBOS (the ``durable`` extra: ``pip install 'miniagents[durable]'``).

* :func:`durable` — mark an agent durable: inside a durable run each of its calls is one DBOS workflow, whose
  id is derived from content (parent, alias, kwargs, input hash keys, occurrence), so a resumed parent
  re-attaches to the children that finished; outside a durable run it is the agent it wraps.
* :class:`DurableRuntime` — DBOS (SQLite for one process, PostgreSQL for many) for an ``async with`` block in a
  ``MiniAgents`` context; :func:`run` runs a graph as the run ``run_id``; the same ``run_id`` after a crash
  resumes it: each LLM exchange is a DBOS step recorded as the raw response (or, when it failed, as the
  ``LLMError`` it raised: class, status, request id, message) and replayed from it, so only the requests that
  were in flight are sent again, the messages keep their hash keys, and an agent that caught an LLM error
  and retried takes the same path again.
* ``python -m miniagents.durable worker --db URL --queue NAME --import myapp`` — a worker process serving a
  queue (``durable(agent, queue=NAME)``), with an executor id of its own; :func:`recover_executor` (``python -m
  miniagents.durable recover``) hands a dead worker's pending calls to the live ones.

Call inputs and replies cross the workflow boundary as ``Message.to_dict()`` data, kwargs as JSON data (never a
pickle of live objects); secrets stay in the agents' default kwargs, in the process, never in the database.
Tokens stream live to a consumer in the process that runs the call.  See the README section "Durable and
distributed runs".
"""

try:
    import dbos as _dbos  # noqa: F401 - checked first for a clear error without the extra
except ModuleNotFoundError as _error:  # pragma: no cover - the test environment has the extra
    if _error.name != "dbos":
        raise
    raise ImportError("miniagents.durable needs DBOS: pip install 'miniagents[durable]'") from _error

from miniagents._publish import publish
from miniagents.durable._agent import DurableAgent, durable
from miniagents.durable._exceptions import (
    DurableCallError,
    DurableConfigError,
    DurableError,
    DurableKwargsError,
    ReplayMismatchError,
)
from miniagents.durable._runtime import DATABASE_ENV, DurableRuntime, recover_executor, run
from miniagents.durable._worker import serve_worker

__all__ = [
    "DATABASE_ENV",
    "DurableAgent",
    "DurableCallError",
    "DurableConfigError",
    "DurableError",
    "DurableKwargsError",
    "DurableRuntime",
    "ReplayMismatchError",
    "durable",
    "recover_executor",
    "run",
    "serve_worker",
]

publish(globals())  # the public names report this module (see miniagents._publish)
