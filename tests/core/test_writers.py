"""Writers opened inside an agent call never leave consumers (or the call itself) waiting forever."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from miniagents import (
    AgentCallCancelledError,
    InteractionContext,
    MessageSequencePromise,
    MiniAgents,
    StreamedPromise,
    miniagent,
)

pytestmark = pytest.mark.anyio


async def test_a_sequence_left_open_fails_after_its_messages_instead_of_hanging_the_call() -> None:
    @miniagent
    async def forgets_to_finish(ctx: InteractionContext) -> None:
        sequence, writer = MessageSequencePromise.open()
        writer.send(["one", "two"])
        ctx.reply(sequence)  # the call's replies wait for this sequence...
        # ...which is never finished

    seen: list[str] = []

    async def consume() -> None:
        async for message in forgets_to_finish.inquire():
            seen.append(str(message))

    with anyio.fail_after(5):
        async with MiniAgents():
            with pytest.raises(AgentCallCancelledError, match="returned without finishing a sequence"):
                await consume()
    assert seen == ["one", "two"]


async def test_a_sequence_finished_by_a_child_task_is_not_cut_short() -> None:
    @miniagent
    async def finishes_later(ctx: InteractionContext) -> None:
        sequence, writer = MessageSequencePromise.open()
        ctx.reply(sequence)

        async def child() -> None:
            for n in range(3):
                await anyio.lowlevel.checkpoint()
                writer.send(f"part {n}")
            writer.finish()
            assert writer.closed

        ctx.start_soon(child)

    async with MiniAgents():
        assert [str(m) for m in await finishes_later.inquire()] == ["part 0", "part 1", "part 2"]


async def test_a_stream_left_open_by_a_call_fails_when_the_call_ends() -> None:
    holder: list[StreamedPromise[str, str]] = []

    @miniagent
    async def leaves_stream_open(ctx: InteractionContext) -> None:
        promise, writer = StreamedPromise.open("".join)
        writer.send("a")
        holder.append(promise)
        ctx.reply("done")

    with anyio.fail_after(5):
        async with MiniAgents():
            await leaves_stream_open.inquire()
            (promise,) = holder
            with pytest.raises(AgentCallCancelledError, match="without finishing"):
                await promise
            assert [piece async for piece in _until_error(promise)] == ["a"]


async def _until_error(promise: StreamedPromise[str, str]) -> AsyncIterator[str]:
    try:
        async for piece in promise:
            yield piece
    except AgentCallCancelledError:
        return
