"""Root calls (started in the block, or from a task attached to it) are supervised by the context on both backends.

On trio they are tasks of the context's calls nursery.  On asyncio they are plain asyncio tasks, children of the
context's *root group* (a ``ScopedChildGroup`` around the block): what a task group guarantees must still hold.
A cancellation of a scope around the block reaches them at once, even while the block's own task is shielded; a
block nested in an agent call is cancelled with that call; the block waits for every root call, also those
started while it exits; and a call started after the block is refused.
"""

from __future__ import annotations

import anyio
import pytest

from miniagents import InteractionContext, MiniAgents, NoActiveContextError, miniagent

pytestmark = pytest.mark.anyio


async def test_a_scope_cancelled_around_the_block_reaches_root_calls_while_the_body_is_shielded() -> None:
    started, cancelled = anyio.Event(), anyio.Event()

    @miniagent
    async def sleeper(ctx: InteractionContext) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    with anyio.CancelScope() as outer:
        async with MiniAgents():
            sleeper.inquire()
            await started.wait()
            outer.cancel()
            with anyio.CancelScope(shield=True), anyio.fail_after(10):  # a liveness guard, not a timing
                await cancelled.wait()  # the body cannot notice the cancellation here, the call must
    assert outer.cancelled_caught


async def test_a_block_nested_in_an_agent_call_is_cancelled_with_that_call() -> None:
    inner_started, inner_cancelled = anyio.Event(), anyio.Event()

    @miniagent
    async def inner(ctx: InteractionContext) -> None:
        inner_started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            inner_cancelled.set()
            raise

    @miniagent
    async def outer(ctx: InteractionContext) -> None:
        async with MiniAgents():  # a context of its own, inside this call
            inner.inquire()
            await anyio.sleep_forever()

    async with MiniAgents():
        call = outer.initiate_call()
        await inner_started.wait()
        call.cancel()
        with anyio.fail_after(10):
            await inner_cancelled.wait()


async def test_the_block_waits_for_root_calls_started_while_it_exits_and_refuses_later_ones() -> None:
    finished: list[str] = []

    @miniagent
    async def slow(ctx: InteractionContext) -> None:
        await anyio.sleep(0.01)
        async for message in ctx.messages:
            finished.append(message.content)

    @miniagent
    async def starter(ctx: InteractionContext) -> None:
        # Its call ends at once; the root call it starts (through the context) outlives it.
        await anyio.sleep(0)
        ctx.reply("started")

    async with MiniAgents() as context:
        for i in range(20):
            slow.inquire(f"m{i}")
        await starter.inquire()
    assert sorted(finished) == sorted(f"m{i}" for i in range(20))
    assert context.statistics().active is False
    with pytest.raises(NoActiveContextError):
        slow.inquire("late")


async def test_a_failing_root_call_does_not_cancel_its_siblings_and_its_error_reaches_the_block() -> None:
    @miniagent
    async def failing(ctx: InteractionContext) -> None:
        raise ValueError("boom")

    @miniagent
    async def steady(ctx: InteractionContext) -> None:
        await anyio.sleep(0.01)
        ctx.reply("done")

    seen: list[str] = []

    async def block() -> None:
        async with MiniAgents():
            failing.inquire()
            seen.extend(m.content for m in await steady.inquire())

    with pytest.raises(ValueError, match="boom"):
        await block()
    assert seen == ["done"]
