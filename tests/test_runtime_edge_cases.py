"""Edge cases of the runtime found in review: each test pins a guarantee that once failed.

Assertions are made outside the ``MiniAgents`` block where possible, so a test fails for its own reason and
not because the block wraps what leaves it in exception groups (see the first tests).
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import anyio
import pytest

from miniagents import (
    CLEAR,
    AgentCallCancelledError,
    ErrorMessage,
    InteractionContext,
    Message,
    MessageSequencePromise,
    MiniAgents,
    StopLoop,
    TextMessage,
    achain_loop,
    miniagent,
)

pytestmark = pytest.mark.anyio


class Boom(Exception):
    pass


def contents(messages: tuple[Message, ...]) -> list[str]:
    return [m.content for m in messages]


async def outcome(awaitable: Awaitable[Any]) -> Any:
    """What awaiting gives: the value, or the exception it raised."""
    try:
        return await awaitable
    except Exception as exc:
        return exc


@miniagent
async def echo(ctx: InteractionContext) -> None:
    async for msg in ctx.messages:
        ctx.reply(f"echo: {msg}")


@miniagent
async def ignores_input(ctx: InteractionContext) -> None:
    ctx.reply("done")


async def slow_tokens() -> AsyncIterator[str]:
    yield "partial"
    await anyio.sleep(10)
    yield "never"


# -- the block: what leaves it --------------------------------------------------------------------------------
async def test_an_exception_raised_in_the_block_body_propagates_unwrapped() -> None:
    with pytest.raises(Boom):
        async with MiniAgents():
            raise Boom("from the body")


async def test_an_agent_error_the_body_lets_propagate_comes_out_unwrapped() -> None:
    @miniagent
    async def failing(ctx: InteractionContext) -> None:
        raise Boom("agent")

    with pytest.raises(Boom):
        async with MiniAgents():
            await failing.inquire()


# -- cancellation ---------------------------------------------------------------------------------------------
async def test_cancelling_a_call_before_it_starts_runs_no_agent_code_even_before_its_first_await() -> None:
    ran: list[str] = []

    @miniagent
    async def agent(ctx: InteractionContext) -> None:
        ran.append("ran")  # no checkpoint before this, or at all
        ctx.reply("should not be delivered")

    async with MiniAgents():
        call = agent.initiate_call()
        call.cancel()
        result = await outcome(call.reply_sequence())
    assert ran == []
    assert isinstance(result, AgentCallCancelledError), result


async def test_a_slow_persistence_handler_does_not_stop_the_block_from_being_cancelled() -> None:
    async def slow(message: Message) -> None:
        await anyio.sleep(5)  # e.g. a hung network call

    started = anyio.current_time()
    with anyio.move_on_after(0.1):
        async with MiniAgents(on_persist_message=slow):
            echo.inquire("hi")
            await anyio.sleep_forever()
    assert anyio.current_time() - started < 2


async def test_an_error_during_the_cancellation_of_an_agents_task_group_stays_in_that_call() -> None:
    @miniagent
    async def fan_out(ctx: InteractionContext) -> None:
        async def worker() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                raise Boom("cleanup failed")

        async with anyio.create_task_group() as tg:
            tg.start_soon(worker)
            await anyio.sleep_forever()

    @miniagent
    async def bystander(ctx: InteractionContext) -> None:
        await anyio.sleep(0.2)
        ctx.reply("survived")

    results: list[Any] = []
    with anyio.fail_after(3):
        try:
            async with MiniAgents():
                other = bystander.inquire()
                call = fan_out.initiate_call()
                replies = call.reply_sequence()
                await anyio.sleep(0.05)
                call.cancel()
                await outcome(replies)
                results.append(await outcome(other))
        except Exception:
            pass
    assert [contents(r) for r in results] == [["survived"]], results


# -- input pumps ----------------------------------------------------------------------------------------------
async def endless(cleanups: list[str] | None = None) -> AsyncIterator[str]:
    try:
        while True:
            yield "tick"
            await anyio.sleep(0.01)
    finally:
        if cleanups is not None:
            cleanups.append("generator closed")


async def test_an_endless_input_generator_does_not_keep_the_block_alive_after_its_call_finished() -> None:
    with anyio.fail_after(2):
        async with MiniAgents():
            assert contents(await ignores_input.inquire(endless())) == ["done"]


async def test_cancelling_a_call_stops_the_generator_that_feeds_its_input() -> None:
    cleanups: list[str] = []
    with anyio.fail_after(2):
        async with MiniAgents():
            call = echo.initiate_call().send(endless(cleanups))
            call.reply_sequence(finish_call=False)
            await anyio.sleep(0.05)
            call.cancel()
            await anyio.sleep(0.05)
            seen = list(cleanups)
            call.finish()
    assert seen == ["generator closed"]


async def test_an_inquiry_rejected_with_type_error_starts_no_call() -> None:
    ran: list[list[str]] = []

    @miniagent
    async def recorder(ctx: InteractionContext) -> None:
        ran.append([m.content async for m in ctx.messages])

    async with MiniAgents():
        with pytest.raises(TypeError):
            recorder.inquire(["a", 5])
    assert ran == []


# -- open inputs ----------------------------------------------------------------------------------------------
async def test_a_call_a_child_task_starts_after_the_agent_returned_never_hangs_the_block() -> None:
    @miniagent
    async def collector(ctx: InteractionContext) -> None:
        ctx.reply(await ctx.messages)

    @miniagent
    async def parent(ctx: InteractionContext) -> None:
        async def child() -> None:
            await anyio.sleep(0.02)  # the agent function has returned by now
            collector.initiate_call().send("x")  # forgotten finish()

        ctx.start_soon(child)

    with anyio.fail_after(2):
        async with MiniAgents():
            await parent.inquire()


async def test_a_child_task_can_keep_sending_to_a_call_it_started_while_the_agent_returns() -> None:
    @miniagent
    async def parent(ctx: InteractionContext) -> None:
        async def child() -> None:
            call = echo.initiate_call().send("a")
            await anyio.sleep(0.05)  # the agent function returns meanwhile
            call.send("b")
            ctx.reply(call.reply_sequence())

        ctx.start_soon(child)
        await anyio.sleep(0.01)

    with anyio.fail_after(3):
        async with MiniAgents():
            result = await outcome(parent.inquire())
    assert not isinstance(result, BaseException), result
    assert contents(result) == ["echo: a", "echo: b"]


# -- memory ---------------------------------------------------------------------------------------------------
async def test_a_finished_call_whose_input_was_left_open_is_freed() -> None:
    async with MiniAgents():
        call = ignores_input.initiate_call().send("x")
        replies = call.reply_sequence(finish_call=False)
        assert contents(await replies) == ["done"]
        ref = weakref.ref(call)
        del call, replies
        for _ in range(5):
            await anyio.sleep(0)
        gc.collect()
        alive = ref() is not None
    assert not alive


# -- errors reach consumers -----------------------------------------------------------------------------------
@miniagent
async def streams_then_fails(ctx: InteractionContext) -> None:
    ctx.reply(TextMessage.stream(slow_tokens()))
    await anyio.sleep(0.01)
    raise Boom("the real cause")


async def test_the_agents_error_reaches_the_consumer_even_while_a_reply_was_streaming() -> None:
    seen: list[Any] = []
    with anyio.fail_after(3):
        try:
            async with MiniAgents():
                seen.append(await outcome(streams_then_fails.inquire()))
        except Exception:
            pass  # the real cause comes out here when the consumer missed it
    assert isinstance(seen[0], Boom), seen


async def test_errors_as_messages_gives_the_error_message_even_while_a_reply_was_streaming() -> None:
    seen: list[Any] = []
    with anyio.fail_after(3):
        try:
            async with MiniAgents(errors_as_messages=True):
                seen.append(await outcome(streams_then_fails.inquire()))
        except Exception:
            pass
    assert isinstance(seen[0], tuple), seen
    assert str(seen[0][-1]) == "Boom: the real cause"


async def failing_tokens() -> AsyncIterator[str]:
    yield "par"
    raise Boom("stream broke")


@miniagent
async def streamer(ctx: InteractionContext) -> None:
    ctx.reply(TextMessage.stream(failing_tokens()))


async def test_errors_as_messages_also_covers_a_failing_streamed_reply() -> None:
    seen: list[Any] = []
    with anyio.fail_after(3):
        try:
            async with MiniAgents(errors_as_messages=True):
                seen.append(await outcome(streamer.inquire()))
        except Exception:
            pass
    assert isinstance(seen[0], tuple), seen
    assert isinstance(seen[0][-1], ErrorMessage)
    assert str(seen[0][-1]) == "Boom: stream broke"


async def test_a_failing_streamed_reply_names_the_agent_that_replied_it() -> None:
    async with MiniAgents():
        error = await outcome(streamer.inquire())
    assert isinstance(error, Boom)
    assert any("'streamer'" in note for note in getattr(error, "__notes__", ())), error


# -- achain_loop ----------------------------------------------------------------------------------------------
async def test_stop_loop_ends_achain_loop_with_errors_as_messages() -> None:
    rounds = 0

    @miniagent
    async def counter(ctx: InteractionContext) -> None:
        nonlocal rounds
        rounds += 1
        if rounds == 2:
            raise StopLoop
        ctx.reply(f"round {rounds}")

    with anyio.move_on_after(2):
        async with MiniAgents(errors_as_messages=True):
            await achain_loop([counter])
    assert rounds == 2


async def test_stop_loop_from_an_agent_whose_output_is_cleared_still_ends_the_loop() -> None:
    rounds = 0

    @miniagent
    async def stopper(ctx: InteractionContext) -> None:
        nonlocal rounds
        rounds += 1
        raise StopLoop

    with anyio.move_on_after(2):
        async with MiniAgents():
            await achain_loop([stopper, CLEAR, ignores_input])
    assert rounds == 1


# -- persistence ----------------------------------------------------------------------------------------------
async def test_shared_resources_are_closed_only_after_persistence_drained() -> None:
    closed: list[bool] = []
    seen_closed: list[bool] = []

    async def aclose(resource: object) -> None:
        closed.append(True)

    async def handler(message: Message) -> None:
        await anyio.sleep(0.01)
        seen_closed.append(bool(closed))

    async with MiniAgents(on_persist_message=handler) as mas:
        mas.shared_resource("pool", object, aclose=aclose)
        await echo.inquire(["a", "b", "c"])
    assert seen_closed == [False] * 6


async def test_messages_of_a_sequence_sent_as_a_whole_input_are_persisted() -> None:
    persisted: list[str] = []
    async with MiniAgents(on_persist_message=lambda m: persisted.append(m.content)):
        await ignores_input.inquire(MessageSequencePromise.resolved([TextMessage(content="sent")]))
    assert "sent" in persisted


async def test_persistence_handlers_see_their_own_context_as_current() -> None:
    seen: list[Any] = []

    def handler(message: Message) -> None:
        try:
            seen.append(MiniAgents.current())
        except Exception as exc:
            seen.append(exc)

    async with MiniAgents(), MiniAgents(on_persist_message=handler) as inner:
        await echo.inquire("hi")
    assert seen == [inner, inner]


# -- ordering -------------------------------------------------------------------------------------------------
async def test_out_of_order_replies_available_at_the_same_moment_keep_the_order_they_were_sent_in() -> None:
    async def ready(text: str) -> AsyncIterator[str]:
        yield text  # available as soon as its pump runs

    @miniagent
    async def fan(ctx: InteractionContext) -> None:
        for text in "abcd":
            ctx.reply_out_of_order(ready(text))

    async with MiniAgents():
        orders = {"".join(contents(await fan.inquire())) for _ in range(20)}
    assert orders == {"abcd"}


# -- context variables ----------------------------------------------------------------------------------------
async def test_a_child_task_of_a_call_belongs_to_that_call_even_if_started_inside_a_nested_block() -> None:
    @miniagent
    async def parent(ctx: InteractionContext) -> None:
        async def child() -> None:
            await anyio.sleep(0.02)  # the nested block has exited by now; the call is still running
            ctx.reply(echo.inquire("x"))

        async with MiniAgents():
            ctx.start_soon(child)

    with anyio.fail_after(3):
        async with MiniAgents():
            result = await outcome(parent.inquire())
    assert not isinstance(result, BaseException), result
    assert contents(result) == ["echo: x"]
