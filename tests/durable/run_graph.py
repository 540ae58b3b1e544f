"""Run (or resume) the durable graph of ``graph_app`` once: ``python run_graph.py BACKEND DB STORE RUN_ID [EXECUTOR]``.

Prints one JSON line: the hash keys of the final replies.  The crash tests kill this process with SIGKILL and
start it again with the same arguments.
"""

from __future__ import annotations

import json
import sys

import anyio
import graph_app

from miniagents import MiniAgents
from miniagents.durable import DurableRuntime, run
from miniagents.persistence import SQLiteStore


async def main(database: str, store: str, run_id: str, executor_id: str) -> None:
    async with MiniAgents(store=SQLiteStore(store)), DurableRuntime(database, executor_id=executor_id):
        replies = await run(graph_app.graph, "How do durable graphs work?", run_id=run_id)
    print(
        json.dumps({"replies": [m.hash_key for m in replies], "text": [str(m) for m in replies]}), flush=True
    )


if __name__ == "__main__":
    backend, database, store, run_id = sys.argv[1:5]
    executor_id = sys.argv[5] if len(sys.argv) > 5 else "crash-test-app"
    anyio.run(main, database, store, run_id, executor_id, backend=backend)
