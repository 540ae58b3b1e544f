"""``MiniAgents.start_service``: a task of the context that holds a resource open until every call finished."""

from __future__ import annotations

import anyio
import pytest

from miniagents import InteractionContext, MiniAgents, NoActiveContextError, miniagent

pytestmark = pytest.mark.anyio


async def test_a_service_is_stopped_after_every_call_of_the_context_finished() -> None:
    events: list[str] = []

    @miniagent
    async def slow(ctx: InteractionContext) -> None:
        for _ in range(50):  # still running well after the block's body ended
            await anyio.sleep(0)
        events.append("call finished")
        ctx.reply("done")

    started = anyio.Event()

    async def service(stop: anyio.Event) -> None:
        events.append("service started")
        started.set()
        await stop.wait()
        events.append("service stopped")

    async with MiniAgents() as context:
        context.start_service(service)
        await started.wait()
        slow.inquire()  # not awaited: the block waits for it when it exits
    assert events == ["service started", "call finished", "service stopped"]


async def test_an_error_of_a_service_is_raised_when_the_block_exits_and_does_not_cancel_the_calls() -> None:
    async def failing(stop: anyio.Event) -> None:
        raise RuntimeError("service broke")

    @miniagent
    async def answer(ctx: InteractionContext) -> None:
        await anyio.sleep(0)
        ctx.reply("42")

    answers: list[str] = []

    async def block() -> None:
        async with MiniAgents() as context:
            context.start_service(failing)
            await anyio.sleep(0)
            answers.append(await answer.inquire().as_single_text())

    with pytest.raises(RuntimeError, match="service broke"):
        await block()
    assert answers == ["42"]


async def test_a_service_is_cancelled_with_the_block() -> None:
    seen: list[str] = []
    started = anyio.Event()

    async def service(stop: anyio.Event) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            seen.append("cancelled")
            raise

    with anyio.CancelScope() as scope:
        async with MiniAgents() as context:
            context.start_service(service)
            await started.wait()
            scope.cancel()
            await anyio.sleep_forever()
    assert seen == ["cancelled"]


async def test_start_service_needs_an_active_context() -> None:
    context = MiniAgents()

    async def service(stop: anyio.Event) -> None:
        await stop.wait()

    with pytest.raises(NoActiveContextError, match="start_service"):
        context.start_service(service)
    async with context:
        pass
    with pytest.raises(NoActiveContextError, match="start_service"):
        context.start_service(service)
