"""Helper process for test_crash.py: a run that persists to a store and reports each commit on stdout.

``python crash_child.py DB`` produces ``m0`` ... ``m1999`` through two agents, printing ``COMMIT <keys>`` after
every commit and ``DONE`` at the end; the test kills it with SIGKILL half way, then runs it again to the end.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import anyio

from miniagents import InteractionContext, MiniAgents, miniagent
from miniagents.persistence import SQLiteStore

COUNT = 2000


def report(keys: Sequence[str]) -> None:
    sys.stdout.write("COMMIT " + " ".join(keys) + "\n")
    sys.stdout.flush()


@miniagent
async def produce(ctx: InteractionContext) -> None:
    for i in range(COUNT):
        ctx.reply(f"m{i}")
        if i % 10 == 9:
            await anyio.sleep(0.002)


@miniagent
async def forward(ctx: InteractionContext) -> None:
    async for message in ctx.messages:
        ctx.reply(message)


async def main(path: str) -> None:
    async with MiniAgents(store=SQLiteStore(path, batch_size=50, flush_interval=0.005, on_commit=report)):
        count = len(await forward.inquire(produce.inquire("start")))
    assert count == COUNT
    sys.stdout.write("DONE\n")
    sys.stdout.flush()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], backend=sys.argv[2] if len(sys.argv) > 2 else "trio")
