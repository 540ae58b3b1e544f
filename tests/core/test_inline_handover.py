"""Stores with non-blocking handlers (``Store.nonblocking_handlers``): the producing task hands messages over itself.

An agent that finds its input ready never yields to the context's persistence task; with such a store its
messages still reach the store while it runs, every ``INLINE_HANDOVER_ITEMS`` messages, in the same order, each
exactly once, with call records after their messages, and handler errors raised as on the usual path.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miniagents import CallRecord, InteractionContext, Message, MiniAgents, TextMessage, miniagent
from miniagents._context import INLINE_HANDOVER_ITEMS

pytestmark = pytest.mark.anyio


class LogStore:
    """A store that logs what it is handed: ``("message", content)`` and ``("call", alias)`` entries."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.batches = 0

    def on_persist_message(self, message: Message) -> None:
        self.log.append(("message", message.content))

    def on_persist_messages(self, messages: list[Message]) -> None:
        self.batches += 1
        self.log.extend(("message", m.content) for m in messages)

    def on_call_finished(self, record: CallRecord) -> None:
        self.log.append(("call", record.agent_alias))

    @property
    def messages(self) -> list[str]:
        return [content for kind, content in self.log if kind == "message"]


class NonblockingLogStore(LogStore):
    nonblocking_handlers = True


def producer_seeing(store: LogStore, count: int, seen: list[int]) -> Any:
    """An agent that replies *count* messages without ever yielding, noting how many *store* had meanwhile."""

    @miniagent(alias="producer")
    async def producer(ctx: InteractionContext) -> None:
        for i in range(count):
            ctx.reply(TextMessage(content=f"m{i}"))
            if i % 1000 == 999:
                seen.append(len(store.messages))

    return producer


async def test_a_nonblocking_store_is_handed_messages_while_the_producer_still_runs() -> None:
    store = NonblockingLogStore()
    seen: list[int] = []
    count = 3 * INLINE_HANDOVER_ITEMS
    async with MiniAgents(store=store):
        await producer_seeing(store, count, seen).inquire()
    # Handed over every INLINE_HANDOVER_ITEMS messages, before the producer ever yielded.
    assert seen[-1] >= (count // INLINE_HANDOVER_ITEMS - 1) * INLINE_HANDOVER_ITEMS
    assert store.messages == [f"m{i}" for i in range(count)]
    assert store.log[-1] == ("call", "producer")


async def test_a_store_without_the_declaration_waits_for_the_persistence_task() -> None:
    store = LogStore()
    seen: list[int] = []
    async with MiniAgents(store=store):
        await producer_seeing(store, 2 * INLINE_HANDOVER_ITEMS, seen).inquire()
    assert max(seen) == 0  # nothing reached it while the producer ran without yielding
    assert len(store.messages) == 2 * INLINE_HANDOVER_ITEMS


async def test_a_plain_handler_beside_the_store_turns_the_inline_handover_off() -> None:
    store = NonblockingLogStore()
    plain: list[str] = []
    seen: list[int] = []
    mas = MiniAgents(store=store)
    mas.on_persist_message(lambda m: plain.append(m.content))
    async with mas:
        await producer_seeing(store, 2 * INLINE_HANDOVER_ITEMS, seen).inquire()
    assert max(seen) == 0
    assert plain == store.messages == [f"m{i}" for i in range(2 * INLINE_HANDOVER_ITEMS)]


async def test_an_error_of_a_nonblocking_store_is_raised_when_the_block_exits() -> None:
    class Failing(NonblockingLogStore):
        def on_persist_messages(self, messages: list[Message]) -> None:
            super().on_persist_messages(messages)
            if self.batches == 1:
                raise OSError("disk full")

    store = Failing()
    with pytest.raises(OSError, match="disk full"):
        async with MiniAgents(store=store):
            await producer_seeing(store, 2 * INLINE_HANDOVER_ITEMS, []).inquire()
    # Later batches were still handed over.
    assert store.messages == [f"m{i}" for i in range(2 * INLINE_HANDOVER_ITEMS)]


async def test_a_store_that_declares_nonblocking_handlers_but_returns_awaitables_is_an_error() -> None:
    class Misdeclared(NonblockingLogStore):
        async def on_persist_messages(self, messages: list[Message]) -> None:  # type: ignore[override]
            super().on_persist_messages(messages)

    with pytest.raises(TypeError, match="nonblocking_handlers = True"):
        async with MiniAgents(store=Misdeclared()):
            await producer_seeing(LogStore(), INLINE_HANDOVER_ITEMS + 10, []).inquire()


# -- the same handover either way ------------------------------------------------------------------------------
_steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("reply"), st.integers(0, 30)
        ),  # a message; a small range makes repeats (equal ones)
        st.tuples(st.just("nested"), st.integers(0, 30)),  # a message holding another
        st.tuples(st.just("burst"), st.integers(1, 3 * INLINE_HANDOVER_ITEMS // 2)),  # many distinct ones
        st.tuples(st.just("call"), st.integers(0, 30)),  # a sub-call, awaited
    ),
    max_size=12,
)


async def _run(store: LogStore, steps: list[tuple[str, int]]) -> None:
    @miniagent(alias="child")
    async def child(ctx: InteractionContext, n: int) -> None:
        ctx.reply(TextMessage(content=f"child {n}"))

    @miniagent(alias="parent")
    async def parent(ctx: InteractionContext) -> None:
        for position, (kind, n) in enumerate(steps):
            if kind == "reply":
                ctx.reply(TextMessage(content=f"r{n}"))
            elif kind == "nested":
                ctx.reply(Message(content=f"holder {n}", inner=TextMessage(content=f"inner {n}")))
            elif kind == "burst":
                for i in range(n):
                    ctx.reply(TextMessage(content=f"b{position}.{i}"))
            else:
                await child.inquire(n=n)

    async with MiniAgents(store=store):
        await parent.inquire()


@settings(max_examples=25, deadline=None)
@given(steps=_steps)
async def test_property_the_inline_handover_hands_over_what_the_persistence_task_would(
    steps: list[tuple[str, int]],
) -> None:
    inline, usual = NonblockingLogStore(), LogStore()
    await _run(inline, steps)
    await _run(usual, steps)
    assert inline.log == usual.log
    assert len(set(inline.messages)) == len(inline.messages)  # each distinct message once
    for kind, n in steps:
        if kind == "nested":  # nested messages first
            assert inline.messages.index(f"inner {n}") < inline.messages.index(f"holder {n}")
