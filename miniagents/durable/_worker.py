"""The command line: ``python -m miniagents.durable worker|recover ...``.

``worker --db URL --queue NAME --import myapp [--executor-id ID]`` serves queues until SIGINT/SIGTERM;
``recover --db URL --executor-id ID`` hands a dead executor's pending calls to the live workers.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence

import anyio

from miniagents._context import MiniAgents
from miniagents.durable._runtime import DurableRuntime, default_executor_id, recover_executor

__all__ = ["main", "serve_worker"]


async def serve_worker(
    database: str,
    queues: Sequence[str],
    *,
    executor_id: str | None = None,
    worker_concurrency: int | None = None,
    ready: anyio.Event | None = None,
    context: MiniAgents | None = None,
) -> None:
    """Serve the durable calls of *queues* (and recovered ones) until cancelled.

    Opens a ``MiniAgents`` context (or uses *context*) and a :class:`DurableRuntime` with *executor_id*
    (default ``<host>-<pid>``); sets *ready* once DBOS is launched.  Cancellation (SIGINT/SIGTERM in ``main``)
    shuts down cleanly; calls still running stay PENDING and are recovered by ``recover_executor`` or by a
    restart with the same executor id.
    """
    async with (
        MiniAgents() if context is None else _nothing(context),
        DurableRuntime(
            database,
            serve_queues=queues,
            executor_id=executor_id or default_executor_id(),
            worker_concurrency=worker_concurrency,
        ),
    ):
        if ready is not None:
            ready.set()
        await anyio.sleep_forever()


class _nothing:
    def __init__(self, context: MiniAgents) -> None:
        self.context = context

    async def __aenter__(self) -> MiniAgents:
        return self.context

    async def __aexit__(self, *exc_info: object) -> None:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m miniagents.durable")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="serve durable calls from DBOS queues")
    worker.add_argument("--db", required=True, help="the DBOS system database URL (postgresql://...)")
    worker.add_argument("--queue", action="append", required=True, help="a queue to serve (repeatable)")
    worker.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        help="a module defining durable agents (repeatable)",
    )
    worker.add_argument(
        "--executor-id", default=None, help="this process's DBOS executor id (default: <host>-<pid>)"
    )
    worker.add_argument(
        "--concurrency", type=int, default=None, help="at most this many calls at once per queue"
    )
    worker.add_argument("--backend", default="trio", choices=["trio", "asyncio"])
    recover = commands.add_parser("recover", help="hand a dead executor's pending calls to the live workers")
    recover.add_argument("--db", required=True, help="the DBOS system database URL")
    recover.add_argument("--executor-id", required=True, help="the executor id of the dead process")
    args = parser.parse_args(argv)
    if args.command == "recover":
        for workflow_id in recover_executor(args.db, args.executor_id):
            print(workflow_id)
        return 0
    sys.path.insert(0, "")
    for module in args.imports:
        importlib.import_module(module)

    async def serve() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        tg.cancel_scope.cancel()
                        return

                tg.start_soon(stop_on_signal)
                await serve_worker(
                    args.db, args.queue, executor_id=args.executor_id, worker_concurrency=args.concurrency
                )

    anyio.run(serve, backend=args.backend)
    return 0
