"""Workloads W1-W5 on upstream ``miniagents==0.0.35`` (asyncio + pydantic).

Runs only inside the upstream virtualenv (``run.py`` creates it); the import name ``miniagents`` is the
PyPI package there.  Agents are written the way upstream documents them: ``@miniagent``, ``ctx.reply``,
``ctx.message_promises``, ``agent.trigger(...)`` (upstream's name for ``inquire``), and token streaming with
``MessageTokenAppender`` + ``TextMessage.promise(message_token_streamer=...)``.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os

import _harness

import miniagents
from miniagents import InteractionContext, MessageTokenAppender, MiniAgents, TextMessage, miniagent

TOKEN = "tok "
YIELD_EVERY = 1024  # the producer of W4 yields to the event loop every this many tokens (same in every impl)


@miniagent
async def echo(ctx: InteractionContext) -> None:
    async for mp in ctx.message_promises:
        ctx.reply(await mp)


@miniagent
async def forward(ctx: InteractionContext) -> None:
    async for mp in ctx.message_promises:
        ctx.reply(await mp)


@miniagent
async def produce_messages(ctx: InteractionContext, n: int) -> None:
    for i in range(n):
        ctx.reply(f"m{i}")


@miniagent
async def produce_tokens(ctx: InteractionContext, n: int) -> None:
    with MessageTokenAppender() as appender:
        ctx.reply(TextMessage.promise(message_token_streamer=appender))
        for i in range(n):
            appender.append(TOKEN)
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)


@miniagent
async def forward_promises(ctx: InteractionContext) -> None:
    # Pass-through: forward every incoming message (promise) as soon as it starts, without awaiting it.
    async for mp in ctx.message_promises:
        ctx.reply(mp)


@miniagent
async def forward_tokens(ctx: InteractionContext) -> None:
    # Re-stream every incoming message token by token into a new streamed reply.
    async for mp in ctx.message_promises:
        with MessageTokenAppender() as appender:
            ctx.reply(TextMessage.promise(message_token_streamer=appender))
            async for token in mp:
                appender.append(token)


async def w1(n: int, sw: _harness.Stopwatch) -> int:
    sw.start()
    count = 0
    async with MiniAgents():
        for i in range(n):
            replies = await echo.trigger(f"m{i}")
            count += len(replies)
    sw.stop()
    return count


async def w2(n: int, sw: _harness.Stopwatch) -> int:
    msgs = [f"m{i}" for i in range(n)]
    sw.start()
    count = 0
    async with MiniAgents():
        seq = forward.trigger(msgs)
        for _ in range(4):
            seq = forward.trigger(seq)
        async for mp in seq:
            await mp
            count += 1
    sw.stop()
    return count


async def w3(n: int, sw: _harness.Stopwatch) -> int:
    sw.start()
    count = 0
    async with MiniAgents():
        pending = [echo.trigger(f"m{i}") for i in range(n)]
        for replies in pending:
            count += len(await replies)
    sw.stop()
    return count


async def _token_pipeline(n: int, sw: _harness.Stopwatch, forwarder: object) -> int:
    sw.start()
    count = 0
    async with MiniAgents():
        seq = produce_tokens.trigger(n=n)
        for _ in range(5):
            seq = forwarder.trigger(seq)  # type: ignore[attr-defined]
        async for mp in seq:
            async for _token in mp:
                count += 1
    sw.stop()
    return count


async def w4(n: int, sw: _harness.Stopwatch) -> int:
    return await _token_pipeline(n, sw, forward_promises)


async def w4r(n: int, sw: _harness.Stopwatch) -> int:
    return await _token_pipeline(n, sw, forward_tokens)


async def w5(n: int, sw: _harness.Stopwatch, consumers: int) -> int:
    counts = [0] * consumers

    async def consume(k: int, seq: object) -> None:
        c = 0
        async for mp in seq:  # type: ignore[attr-defined]
            await mp
            c += 1
        counts[k] = c

    async with MiniAgents():
        seq = produce_messages.trigger(n=n)
        await seq  # the sequence is complete before the late consumers arrive
        sw.start()
        await asyncio.gather(*(consume(k, seq) for k in range(consumers)))
        sw.stop()
    return sum(counts)


WORKLOADS = {"w1": w1, "w2": w2, "w3": w3, "w4": w4, "w4r": w4r, "w5": w5}


def run_loop(fn, backend):  # type: ignore[no-untyped-def]
    if backend != "asyncio":
        raise SystemExit("upstream miniagents runs on asyncio only")
    return asyncio.run(fn())


def describe() -> dict[str, str]:
    return {
        "miniagents_version": importlib.metadata.version("miniagents"),
        "miniagents_file": os.path.abspath(miniagents.__file__),
    }


if __name__ == "__main__":
    logging.getLogger("MiniAgents").setLevel(logging.ERROR)
    _harness.main("upstream", WORKLOADS, run_loop, describe)
