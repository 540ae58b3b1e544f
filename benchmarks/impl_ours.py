"""Workloads W1-W5 on this project's ``miniagents`` (anyio: trio or asyncio backend).

``run.py`` puts the repository root first on ``PYTHONPATH``, so this imports the working tree.  The agents
are written exactly like their upstream counterparts in ``impl_upstream.py``.
"""

from __future__ import annotations

import os

import _harness
import anyio

import miniagents
from miniagents import InteractionContext, MessagePromise, MiniAgents, TextMessage, miniagent

TOKEN = "tok "
YIELD_EVERY = 1024  # the producer of W4 yields to the scheduler every this many tokens (same in every impl)


@miniagent
async def echo(ctx: InteractionContext) -> None:
    async for msg in ctx.messages:
        ctx.reply(msg)


@miniagent
async def forward(ctx: InteractionContext) -> None:
    async for msg in ctx.messages:
        ctx.reply(msg)


@miniagent
async def produce_messages(ctx: InteractionContext, n: int) -> None:
    for i in range(n):
        ctx.reply(f"m{i}")


@miniagent
async def produce_tokens(ctx: InteractionContext, n: int) -> None:
    promise, writer = MessagePromise.open(message_class=TextMessage)
    ctx.reply(promise)
    for i in range(n):
        writer.send(TOKEN)
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            await anyio.lowlevel.checkpoint()
    writer.finish()


@miniagent
async def forward_promises(ctx: InteractionContext) -> None:
    # Pass-through: forward every incoming message (promise) as soon as it starts, without awaiting it.
    async for mp in ctx.messages.promises():
        ctx.reply(mp)


@miniagent
async def forward_tokens(ctx: InteractionContext) -> None:
    # Re-stream every incoming message token by token into a new streamed reply.
    async for mp in ctx.messages.promises():
        promise, writer = MessagePromise.open(message_class=TextMessage)
        ctx.reply(promise)
        async for token in mp:
            writer.send(token)
        writer.finish()


async def w1(n: int, sw: _harness.Stopwatch) -> int:
    sw.start()
    count = 0
    async with MiniAgents():
        for i in range(n):
            replies = await echo.inquire(f"m{i}")
            count += len(replies)
    sw.stop()
    return count


async def w2(n: int, sw: _harness.Stopwatch) -> int:
    msgs = [f"m{i}" for i in range(n)]
    sw.start()
    count = 0
    async with MiniAgents():
        seq = forward.inquire(msgs)
        for _ in range(4):
            seq = forward.inquire(seq)
        async for _msg in seq:
            count += 1
    sw.stop()
    return count


async def w3(n: int, sw: _harness.Stopwatch) -> int:
    sw.start()
    count = 0
    async with MiniAgents():
        pending = [echo.inquire(f"m{i}") for i in range(n)]
        for replies in pending:
            count += len(await replies)
    sw.stop()
    return count


async def _token_pipeline(n: int, sw: _harness.Stopwatch, forwarder: miniagents.MiniAgent) -> int:
    sw.start()
    count = 0
    async with MiniAgents():
        seq = produce_tokens.inquire(n=n)
        for _ in range(5):
            seq = forwarder.inquire(seq)
        async for mp in seq.promises():
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

    async def consume(k: int, seq: miniagents.MessageSequencePromise) -> None:
        c = 0
        async for _msg in seq:
            c += 1
        counts[k] = c

    async with MiniAgents():
        seq = produce_messages.inquire(n=n)
        await seq  # the sequence is complete before the late consumers arrive
        sw.start()
        async with anyio.create_task_group() as tg:
            for k in range(consumers):
                tg.start_soon(consume, k, seq)
        sw.stop()
    return sum(counts)


async def w6(n: int, sw: _harness.Stopwatch) -> int:
    # Read an n-token OpenAI stream from the W6 server (benchmarks/w6_server.py, another process) through
    # openai_agent, consuming every token.  The timed region includes the MiniAgents context (and so the
    # creation and closing of the pooled HTTP client) and the request.
    from miniagents.llms import openai_agent

    base_url = _harness.w6_base_url()
    sw.start()
    count = 0
    async with MiniAgents():
        replies = openai_agent.inquire("hi", model=f"bench-{n}", base_url=base_url, api_key="bench")
        async for mp in replies.promises():
            async for token in mp:
                if token:
                    count += 1
    sw.stop()
    return count


WORKLOADS = {"w1": w1, "w2": w2, "w3": w3, "w4": w4, "w4r": w4r, "w5": w5, "w6": w6}


def run_loop(fn, backend):  # type: ignore[no-untyped-def]
    return anyio.run(fn, backend=backend)


def describe() -> dict[str, str]:
    return {
        "miniagents_version": getattr(miniagents, "__version__", "?"),
        "miniagents_file": os.path.abspath(miniagents.__file__),
    }


if __name__ == "__main__":
    _harness.main("ours", WORKLOADS, run_loop, describe)
