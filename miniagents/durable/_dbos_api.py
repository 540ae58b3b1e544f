"""Everything this package asks of DBOS, in one module (the only one that imports ``dbos``).

Only public DBOS API is used (with DBOS's portable JSON serializer: no pickles in the database): ``DBOS(config=...)``, ``DBOS.launch``/``destroy``, ``DBOS.listen_queues``,
``DBOS.register_queue``, ``@DBOS.workflow``, ``SetWorkflowID`` with ``DBOS.start_workflow_async`` /
``DBOS.enqueue_workflow_async``, ``DBOS.run_step_async``, ``DBOS.workflow_id``, ``DBOS.list_workflows_async``
(a reused run id's recorded input), and ``DBOSClient``'s
``list_workflows`` / ``resume_workflow`` (recovering a dead executor's calls from any process).  The behaviour this package relies on (checked by ``tests/durable/test_dbos_api.py``,
which fails loudly on a DBOS release that changes it):

* a workflow started again with an id that exists is not run a second time: its handle waits for the run that
  owns it (``should_execute`` is false unless the caller created the row);
* a step's id is drawn when ``run_step_async`` is called (before its first ``await``), in call order; a step
  whose function raises something that is not an ``Exception`` (here: a cancellation) records nothing;
* on launch, the PENDING workflows of this executor id are re-enqueued (to their own queue, or DBOS's internal
  one) and run again; async workflows run on the event loop that called ``launch()``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from dbos import DBOS, DBOSClient, DBOSConfig, DBOSPortableJSONSerializer, SetWorkflowID, StepOptions

from miniagents.durable._exceptions import DurableConfigError

__all__ = [
    "DBOS_VERSION_RANGE",
    "STEP_NAME",
    "WORKFLOW_NAME",
    "check_version",
    "current_workflow_id",
    "destroy",
    "launch",
    "quiet_logs",
    "recover_executor",
    "run_step",
    "set_workflow_body",
    "start_and_wait",
]

#: The DBOS releases this package is written against (``pyproject.toml``'s ``durable`` extra says the same).
DBOS_VERSION_RANGE = ((3, 4), (3, 5))
#: The name of the one DBOS workflow every durable call runs as.
WORKFLOW_NAME = "miniagents.durable.call"
#: The name of the DBOS step of one LLM exchange.
STEP_NAME = "miniagents.durable.llm_exchange"

_body: Callable[[str], Awaitable[str]] | None = None


def installed_version() -> tuple[int, ...]:
    """The installed DBOS version as numbers (``3.4.0`` gives ``(3, 4, 0)``)."""
    from importlib.metadata import version

    parts = []
    for piece in version("dbos").split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check_version() -> None:
    """Raise :class:`DurableConfigError` unless the installed DBOS is in :data:`DBOS_VERSION_RANGE`."""
    low, high = DBOS_VERSION_RANGE
    found = installed_version()
    if not low <= found[:2] < high:
        raise DurableConfigError(
            f"miniagents.durable supports dbos>={low[0]}.{low[1]},<{high[0]}.{high[1]}; "
            f"dbos {'.'.join(map(str, found))} is installed"
        )


def set_workflow_body(body: Callable[[str], Awaitable[str]] | None) -> None:
    """Set what the durable-call workflow runs (the active runtime's), or ``None``."""
    global _body
    _body = body


@DBOS.workflow(name=WORKFLOW_NAME)
async def _durable_call(spec: str) -> str:
    body = _body
    if body is None:  # pragma: no cover - DBOS runs workflows only while a runtime is launched
        raise DurableConfigError("a durable call was started while no DurableRuntime is active")
    return await body(spec)


def current_workflow_id() -> str:
    """The id of the workflow the calling task runs in."""
    workflow_id = DBOS.workflow_id
    if workflow_id is None:  # pragma: no cover - only called from the workflow body
        raise DurableConfigError("not inside a durable workflow")
    return workflow_id


async def launch(
    *,
    name: str,
    database_url: str,
    executor_id: str,
    application_version: str,
    serve_queues: Sequence[str],
    declare_queues: Sequence[str],
    queue_polling_interval: float,
    worker_concurrency: int | None,
    log_level: str,
) -> None:
    """Create and launch DBOS from a task of the event loop that is to run the workflows.

    Only *serve_queues* are dequeued by this process (DBOS's internal queue, where recovered workflows may
    go, always is); *declare_queues* are registered so that calls can be enqueued on them.  With
    *worker_concurrency*, the served queues run at most that many calls at once in each process.
    """
    config: DBOSConfig = {
        "name": name,
        "system_database_url": database_url,
        "executor_id": executor_id,
        "application_version": application_version,
        "log_level": log_level,
        "notification_listener_polling_interval_sec": queue_polling_interval,
        # Inputs, outputs and step results are JSON text in the database, never pickles.
        "serializer": DBOSPortableJSONSerializer(),
    }
    quiet_logs()
    DBOS(config=config)
    DBOS.listen_queues(list(serve_queues))
    DBOS.launch()
    for queue in sorted({*serve_queues, *declare_queues}):
        await DBOS.register_queue_async(
            queue,
            polling_interval_sec=queue_polling_interval,
            worker_concurrency=worker_concurrency if queue in serve_queues else None,
            on_conflict="always_update" if queue in serve_queues else "never_update",
        )


def destroy() -> None:
    """Shut DBOS down (its threads end; workflows still running stay PENDING and are recovered later)."""
    DBOS.destroy()


async def start_and_wait(workflow_id: str, queue: str | None, spec: str, polling_interval: float) -> str:
    """Start (or re-attach to) the durable call *workflow_id* and return its result.

    Must run in a task with no DBOS context (a fresh ``contextvars.Context``): the workflow is then a root
    workflow addressed by its id alone, outside any parent's step numbering.  A root call's id is the run id
    the user gave, not derived from content: re-attaching to it checks that it is the same call.
    """
    if (
        json.loads(spec).get("run_id") == workflow_id
    ):  # the root (a child's id is "<run id>:<alias>:<digest>")
        await _check_same_run(workflow_id, spec)
    with SetWorkflowID(workflow_id):
        if queue is None:
            handle = await DBOS.start_workflow_async(_durable_call, spec)
        else:
            handle = await DBOS.enqueue_workflow_async(queue, _durable_call, spec)
    result: str = await handle.get_result(polling_interval_sec=polling_interval)
    return result


#: What identifies a durable call in its recorded input (the run id is its workflow id, for a root call).
_SAME_CALL_FIELDS = ("alias", "kwargs", "input")


async def _check_same_run(workflow_id: str, spec: str) -> None:
    """Raise :class:`DurableConfigError` if the run *workflow_id* was recorded for another agent, kwargs or input.

    DBOS re-attaches to a workflow by id whatever its arguments, and every durable call is the same DBOS
    workflow function: without this, reusing a run id for another graph would return the old run's replies.
    """
    found = await DBOS.list_workflows_async(workflow_ids=[workflow_id], load_input=True, load_output=False)
    if not found:
        return
    recorded_input: Any = found[0].input
    args = recorded_input.get("args") if isinstance(recorded_input, dict) else None
    if not args or not isinstance(args[0], str):
        return  # not a call this package recorded: DBOS reports what it finds
    recorded, given = json.loads(args[0]), json.loads(spec)
    differing = [field for field in _SAME_CALL_FIELDS if recorded.get(field) != given.get(field)]
    if differing:
        raise DurableConfigError(
            f"run id {workflow_id!r} was recorded for a call of agent {recorded.get('alias')!r} with other "
            f"{', '.join(differing)}: a run id names one run; resume it with the same agent, kwargs and input,"
            " or use a new run id"
        )


async def run_step(func: Callable[[], Coroutine[Any, Any, str]]) -> str:
    """Run *func* as the next step of the calling task's workflow (or return what that step recorded)."""
    result: str = await DBOS.run_step_async(StepOptions(name=STEP_NAME), func)
    return result


def recover_executor(database_url: str, executor_id: str) -> list[str]:
    """Put the PENDING durable calls of *executor_id* back on their queues; return their ids (blocking)."""
    client = DBOSClient(system_database_url=database_url, serializer=DBOSPortableJSONSerializer())
    try:
        found = client.list_workflows(
            status="PENDING", executor_id=executor_id, name=WORKFLOW_NAME, load_input=False, load_output=False
        )
        for status in found:
            client.resume_workflow(status.workflow_id, queue_name=status.queue_name)
        return [status.workflow_id for status in found]
    finally:
        client.destroy()


class _QuietReattach(logging.Filter):
    """Drops DBOS's warning that a re-attached call's queue differs (a recovered call moved queues)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "already exists in queue" not in record.getMessage()


def quiet_logs() -> None:
    """Install :class:`_QuietReattach` on DBOS's logger (once)."""
    logger = logging.getLogger("dbos")
    if not any(isinstance(f, _QuietReattach) for f in logger.filters):
        logger.addFilter(_QuietReattach())
