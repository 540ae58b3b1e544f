"""Errors are never lost and cancellation is prompt and clean.

What leaves the ``MiniAgents`` block, calls cancelled before they start, input generators stopped with their
call, and an agent's error reaching its consumer even while a reply was streaming.  Assertions are made outside
the block where possible, so a test fails for its own reason and not because the block wraps what leaves it in
exception groups.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from core_helpers import Boom, contents, echo, ignores_input, outcome

from miniagents import (
    AgentCallCancelledError,
    ErrorMessage,
    InteractionContext,
    Message,
    MessagePromise,
    MiniAgents,
    TextMessage,
    miniagent,
)

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import ExceptionGroup

pytestmark = pytest.mark.anyio


@miniagent
async def fails_after_two(ctx: InteractionContext) -> None:
    ctx.reply("one")
    ctx.reply_out_of_order("two")
    raise Boom("boom")


@miniagent
async def forwarder(ctx: InteractionContext) -> None:
    ctx.reply(fails_after_two.inquire())


async def collect(replies: object) -> tuple[list[str], BaseException | None]:
    seen: list[str] = []
    try:
        async for msg in replies:  # type: ignore[attr-defined]
            seen.append(str(msg))
    except Exception as error:
        return seen, error
    return seen, None


# -- errors ---------------------------------------------------------------------------------------------------
async def test_error_reaches_every_consumer_after_the_messages_sent_before_it() -> None:
    async with MiniAgents():
        replies = fails_after_two.inquire()
        first = await collect(replies)
        late = await collect(replies)  # a late consumer sees the same thing
        with pytest.raises(Boom):
            await replies
    assert first[0] == late[0] == ["one", "two"]
    assert isinstance(first[1], Boom) and first[1] is late[1]


async def test_error_reports_name_the_agent_and_the_chain_of_calls() -> None:
    async with MiniAgents():
        seen, error = await collect(forwarder.inquire())
    assert seen == ["one", "two"]
    assert isinstance(error, Boom)
    assert "miniagents: raised in agent 'fails_after_two' (call chain: forwarder -> fails_after_two)" in (
        error.__notes__
    )


async def test_errors_as_messages_turns_the_exception_into_an_error_message() -> None:
    async with MiniAgents(errors_as_messages=True):
        replies = await forwarder.inquire()
    assert [str(m) for m in replies] == ["one", "two", "Boom: boom"]
    assert isinstance(replies[-1], ErrorMessage)
    assert replies[-1].agent_alias == "fails_after_two"


async def test_an_error_nobody_observed_is_raised_when_the_block_exits() -> None:
    with pytest.raises(Boom) as info:
        async with MiniAgents():
            fails_after_two.inquire()
    assert any("no consumer observed" in note for note in info.value.__notes__)


async def test_an_observed_error_is_not_raised_again_at_exit() -> None:
    async with MiniAgents():
        _, error = await collect(fails_after_two.inquire())
    assert isinstance(error, Boom)


async def test_several_unobserved_errors_are_raised_together() -> None:
    with pytest.raises(ExceptionGroup) as info:  # noqa: PT012 - the block's exit raises
        async with MiniAgents():
            fails_after_two.inquire()
            fails_after_two.inquire()
    assert len(info.value.exceptions) == 2
    assert all(isinstance(e, Boom) for e in info.value.exceptions)


async def test_an_error_in_a_child_task_fails_the_call() -> None:
    async def broken() -> None:
        await anyio.sleep(0)
        raise Boom("in child")

    @miniagent
    async def parent(ctx: InteractionContext) -> None:
        ctx.start_soon(broken)
        ctx.reply("parent reply")
        await anyio.sleep_forever()  # cancelled by the child's failure

    async with MiniAgents():
        with anyio.fail_after(5):
            seen, error = await collect(parent.inquire())
    assert seen == ["parent reply"]
    assert isinstance(error, Boom) and str(error) == "in child"


async def test_an_error_raised_by_a_forwarded_stream_fails_the_forwarding_call() -> None:
    async def tokens() -> object:
        yield "a"
        raise Boom("stream broke")

    @miniagent
    async def streamer(ctx: InteractionContext) -> None:
        ctx.reply(tokens())

    async with MiniAgents():
        seen, error = await collect(streamer.inquire())
    assert seen == ["a"]
    assert isinstance(error, Boom)


async def test_replies_made_before_a_failure_are_delivered_even_if_not_ready_in_order() -> None:
    # Ordered replies queued behind one that is not ready, and out-of-order replies, are all salvaged.
    never = anyio.Event()

    @miniagent
    async def waits_forever(ctx: InteractionContext) -> None:
        ctx.reply("partial")
        await never.wait()

    @miniagent
    async def agent(ctx: InteractionContext) -> None:
        ctx.reply(waits_forever.inquire())
        ctx.reply("queued behind it")
        ctx.reply_out_of_order(["ooo 1", "ooo 2"])
        await anyio.sleep(0.01)
        raise Boom("late failure")

    async with MiniAgents():
        with anyio.fail_after(5):
            seen, error = await collect(agent.inquire())
    assert isinstance(error, Boom)
    # "partial" was not produced yet when the out-of-order replies were made, so they come first.
    assert seen == ["ooo 1", "ooo 2", "partial", "queued behind it"]


async def test_a_streamed_message_left_unfinished_is_failed_when_its_call_ends() -> None:
    @miniagent
    async def sloppy(ctx: InteractionContext) -> None:
        promise, writer = MessagePromise.open()
        writer.send("tok")
        ctx.reply(promise)  # returns without finishing the writer

    async with MiniAgents():
        replies = sloppy.inquire()
        with anyio.fail_after(5):
            promises = [p async for p in replies.promises()]
            assert [t async for t in _tokens_until_error(promises[0])] == ["tok"]
            with pytest.raises(AgentCallCancelledError, match="without finishing"):
                await promises[0]


async def _tokens_until_error(promise: MessagePromise) -> object:
    try:
        async for token in promise:
            yield token
    except AgentCallCancelledError:
        return


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
async def test_cancelling_the_block_cancels_every_call_and_runs_finally_blocks() -> None:
    cleanups: list[str] = []
    started = anyio.Event()

    @miniagent
    async def grandchild(ctx: InteractionContext) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cleanups.append("grandchild")

    @miniagent
    async def child(ctx: InteractionContext) -> None:
        try:
            ctx.reply(grandchild.inquire())
            started.set()
            await anyio.sleep_forever()
        finally:
            cleanups.append("child")

    with anyio.fail_after(5):
        with anyio.CancelScope() as scope:
            async with MiniAgents():
                child.inquire()
                await started.wait()
                await anyio.sleep(0.01)
                scope.cancel()
                await anyio.sleep_forever()
    assert sorted(cleanups) == ["child", "grandchild"]


async def test_agent_call_cancel_cancels_the_call_and_its_children() -> None:
    cleanups: list[str] = []
    running = anyio.Event()

    @miniagent
    async def inner(ctx: InteractionContext) -> None:
        try:
            running.set()
            await anyio.sleep_forever()
        finally:
            cleanups.append("inner")

    @miniagent
    async def outer(ctx: InteractionContext) -> None:
        ctx.reply("before")
        ctx.reply(inner.inquire())
        try:
            await anyio.sleep_forever()
        finally:
            cleanups.append("outer")

    async with MiniAgents():
        call = outer.initiate_call()
        replies = call.reply_sequence()
        with anyio.fail_after(5):
            await running.wait()
            call.cancel()
            seen, error = await collect(replies)
    assert seen == ["before"]
    assert isinstance(error, AgentCallCancelledError)
    assert sorted(cleanups) == ["inner", "outer"]


async def test_cancelling_a_call_before_it_starts_runs_no_agent_code() -> None:
    ran: list[str] = []

    @miniagent
    async def agent(ctx: InteractionContext) -> None:
        await anyio.sleep(0)
        ran.append("ran")

    async with MiniAgents():
        call = agent.initiate_call()
        call.cancel()
        with pytest.raises(AgentCallCancelledError):
            await call.reply_sequence()
    assert ran == []


async def test_a_cancelled_call_is_not_an_error_at_exit() -> None:
    @miniagent
    async def forever(ctx: InteractionContext) -> None:
        await anyio.sleep_forever()

    async with MiniAgents():
        call = forever.initiate_call()
        call.cancel()
    # no exception: cancellation is not a failure


async def test_a_failing_call_cancels_its_children() -> None:
    cleanups: list[str] = []
    started = anyio.Event()

    @miniagent
    async def child(ctx: InteractionContext) -> None:
        try:
            started.set()
            await anyio.sleep_forever()
        finally:
            cleanups.append("child")

    @miniagent
    async def parent(ctx: InteractionContext) -> None:
        child.inquire()
        await started.wait()
        raise Boom("parent failed")

    async with MiniAgents():
        with anyio.fail_after(5):
            _, error = await collect(parent.inquire())
    assert isinstance(error, Boom)
    assert cleanups == ["child"]


async def test_a_consumer_that_stops_waiting_does_not_cancel_the_call() -> None:
    gate = anyio.Event()

    @miniagent
    async def producer(ctx: InteractionContext) -> None:
        ctx.reply("first")
        await gate.wait()
        ctx.reply("second")

    async with MiniAgents():
        replies = producer.inquire()
        with anyio.move_on_after(0.02):
            await replies  # this consumer gives up
        gate.set()
        assert [str(m) for m in await replies] == ["first", "second"]  # another one gets everything


async def test_an_outside_cancellation_of_a_waiting_consumer_leaves_others_unaffected() -> None:
    gate = anyio.Event()
    results: list[list[str]] = []

    @miniagent
    async def producer(ctx: InteractionContext) -> None:
        await gate.wait()
        ctx.reply("value")

    async def consume(replies: object, scope: anyio.CancelScope | None) -> None:
        if scope is not None:
            with scope:
                await replies  # type: ignore[misc]
            return
        results.append([str(m) for m in await replies])  # type: ignore[misc]

    async with MiniAgents():
        replies = producer.inquire()
        scope = anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume, replies, scope)
            tg.start_soon(consume, replies, None)
            await anyio.sleep(0.01)
            scope.cancel()
            gate.set()
    assert results == [["value"]]


async def test_messages_stay_immutable_after_errors() -> None:
    message = Message(content="x", data={"a": [1]})
    with pytest.raises(AttributeError):
        message.content = "y"  # type: ignore[misc]


async def test_an_error_in_the_block_body_cancels_the_calls_and_propagates_unwrapped() -> None:
    cleanups: list[str] = []
    started = anyio.Event()

    @miniagent
    async def forever(ctx: InteractionContext) -> None:
        try:
            started.set()
            await anyio.sleep_forever()
        finally:
            cleanups.append("forever")

    with anyio.fail_after(5), pytest.raises(Boom, match="in the body"):  # noqa: PT012 - not an ExceptionGroup
        async with MiniAgents():
            forever.inquire()
            await started.wait()
            raise Boom("in the body")
    assert cleanups == ["forever"]


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


# -- input pumps ---------------------------------------------------------------------------------------------
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


# -- errors reach consumers while a reply streams ------------------------------------------------------------
async def slow_tokens() -> AsyncIterator[str]:
    yield "partial"
    await anyio.sleep(10)
    yield "never"


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
