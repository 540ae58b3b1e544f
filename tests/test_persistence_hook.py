"""The on_persist_message hook: once per distinct message, nested first, failures never swallowed."""

from __future__ import annotations

import anyio
import pytest

from miniagents import InteractionContext, Message, MessagePromise, MiniAgents, TextMessage, miniagent

pytestmark = pytest.mark.anyio


@miniagent
async def repeater(ctx: InteractionContext) -> None:
    async for msg in ctx.messages:
        ctx.reply(msg)
        ctx.reply(TextMessage(content=str(msg)))  # equal message built separately
    ctx.reply(
        Message(content="holder", inner=TextMessage(content="nested"), more=[TextMessage(content="n2")])
    )


async def test_each_distinct_message_is_persisted_once_with_nested_messages_first() -> None:
    stored: list[Message] = []
    async with MiniAgents(on_persist_message=stored.append):
        await repeater.inquire(["a", "b", "a"])
        await repeater.inquire(["a"])
    assert [m.content for m in stored] == ["a", "b", "nested", "n2", "holder"]
    assert len({m.hash_key for m in stored}) == len(stored)


async def test_async_and_plain_handlers_and_the_decorator_all_see_every_message() -> None:
    plain: list[str] = []
    asynchronous: list[str] = []
    decorated: list[str] = []

    async def async_handler(message: Message) -> None:
        await anyio.sleep(0)
        asynchronous.append(message.content)

    mas = MiniAgents(on_persist_message=[lambda m: plain.append(m.content), async_handler])

    @mas.on_persist_message
    def handler(message: Message) -> None:
        decorated.append(message.content)

    async with mas:
        await repeater.inquire("x")
    assert plain == asynchronous == decorated == ["x", "nested", "n2", "holder"]


async def test_streamed_messages_are_persisted_when_they_resolve() -> None:
    stored: list[Message] = []

    @miniagent
    async def streamer(ctx: InteractionContext) -> None:
        promise, writer = MessagePromise.open(role="assistant")
        ctx.reply(promise)
        writer.send("hel")
        await anyio.sleep(0)
        writer.send("lo")
        writer.finish(model="m")

    async with MiniAgents(on_persist_message=stored.append):
        await streamer.inquire()
    assert stored == [TextMessage(content="hello", role="assistant", model="m")]


async def test_a_failing_handler_is_raised_when_the_block_exits() -> None:
    stored: list[str] = []

    def broken(message: Message) -> None:
        if message.content == "nested":
            raise RuntimeError(f"cannot store {message.content}")
        stored.append(message.content)

    with pytest.raises(RuntimeError, match="cannot store nested") as info:
        async with MiniAgents(on_persist_message=broken):
            await repeater.inquire("x")
    assert stored == ["x", "n2", "holder"]  # the worker keeps going after a failure
    assert any("on_persist_message handler" in note for note in info.value.__notes__)


async def test_statistics_report_persisted_messages() -> None:
    async with MiniAgents(on_persist_message=lambda m: None) as mas:
        await repeater.inquire("x")
    assert mas.statistics().persisted_messages == 4
    assert mas.statistics().active is False
