"""Timing semantics checked exactly, on trio's virtual clock (pytest-trio's autojump_clock): no real waiting,
no dependence on how busy the machine is."""

from __future__ import annotations

import pytest
import trio

from miniagents import InteractionContext, MiniAgents, miniagent


@miniagent
async def sleeper(ctx: InteractionContext, seconds: float) -> None:
    await trio.sleep(seconds)
    ctx.reply(f"slept {seconds}")


@pytest.mark.trio
async def test_ten_agents_sleeping_in_parallel_take_the_time_of_one(autojump_clock: trio.abc.Clock) -> None:
    async with MiniAgents():
        start = trio.current_time()
        replies = [sleeper.inquire(seconds=0.2) for _ in range(10)]
        for r in replies:
            await r
        assert trio.current_time() - start == pytest.approx(0.2)


@pytest.mark.trio
async def test_a_chain_takes_the_sum_of_its_steps(autojump_clock: trio.abc.Clock) -> None:
    @miniagent
    async def step(ctx: InteractionContext) -> None:
        await ctx.messages
        await trio.sleep(1)
        ctx.reply("step")

    async with MiniAgents():
        start = trio.current_time()
        replies = step.inquire(step.inquire(step.inquire()))
        await replies
        assert trio.current_time() - start == pytest.approx(3)


@pytest.mark.trio
async def test_out_of_order_reply_arrives_when_ready_not_when_the_ordered_ones_are(
    autojump_clock: trio.abc.Clock,
) -> None:
    @miniagent
    async def mixed(ctx: InteractionContext) -> None:
        ctx.reply(sleeper.inquire(seconds=5))
        ctx.reply_out_of_order(sleeper.inquire(seconds=1))

    async with MiniAgents():
        start = trio.current_time()
        arrivals = []
        async for msg in mixed.inquire():
            arrivals.append((str(msg), trio.current_time() - start))
    assert arrivals == [("slept 1", pytest.approx(1)), ("slept 5", pytest.approx(5))]
