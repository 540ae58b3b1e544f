"""Replaying a complete sequence (``async for`` by late consumers), on trio and asyncio.

A complete, successful sequence whose messages are all resolved is replayed by a fast path (an untracked async
generator over the resolved messages, ``_sequence._replay``); anything else by the general iterator.  Whatever
the path, a late consumer must see what the first consumer saw: the same messages in the same order, then the
same error object, with the failure marked observed (and an unread ``ErrorMessage`` of ``errors_as_messages``
observed only when a consumer reaches it).
"""

from __future__ import annotations

import contextlib
import gc
import sys
import warnings
import weakref
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miniagents import (
    ErrorMessage,
    InteractionContext,
    Message,
    MessagePromise,
    MessageSequencePromise,
    MessageWriter,
    MiniAgent,
    MiniAgents,
    TextMessage,
)
from miniagents._sequence import _MessageIterator

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

pytestmark = pytest.mark.anyio

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,
)
HANG = 10


class Boom(Exception):
    """The failure the producers raise."""


@attrs.frozen
class Item:
    """One message of a produced sequence: ``resolved`` text, ``streamed`` tokens, or tokens that then fail.

    ``external`` items are promises opened in the ``MiniAgents`` block and finished by the test only after the
    sequence itself is complete (so the sequence is done while one of its messages still streams).
    """

    kind: str  # "resolved" | "streamed" | "fails"
    tokens: tuple[str, ...]
    checkpoints: int  # scheduling checkpoints between tokens (0: none)
    external: bool


items = st.builds(
    Item,
    kind=st.sampled_from(["resolved", "resolved", "streamed", "fails"]),
    tokens=st.lists(st.sampled_from(["a", "b", "cd", ""]), max_size=3).map(tuple),
    checkpoints=st.integers(0, 2),
    external=st.booleans(),
)


async def _checkpoints(count: int) -> None:
    for _ in range(count):
        await anyio.lowlevel.checkpoint()


@attrs.define
class Outcome:
    """What one consumer saw: the messages, then the error that ended its loop (None: the loop ended)."""

    messages: list[Message]
    error: BaseException | None


async def _consume(sequence: MessageSequencePromise, stop_after: int | None = None) -> Outcome:
    seen: list[Message] = []
    try:
        async for message in sequence:
            seen.append(message)
            if stop_after is not None and len(seen) >= stop_after:
                break
    except Boom as exc:
        return Outcome(seen, exc)
    return Outcome(seen, None)


def _replier(spec: list[Item], fail_at_end: bool, externals: list[MessagePromise]) -> MiniAgent:
    async def replier(ctx: InteractionContext) -> None:
        pending = iter(externals)
        for index, item in enumerate(spec):
            if item.external:
                ctx.reply(next(pending))
            elif item.kind == "resolved":
                ctx.reply(_content(index, item))
            else:
                promise, writer = MessagePromise.open()
                ctx.reply(promise)
                await _stream_item(index, item, writer)
            await _checkpoints(item.checkpoints)
        if fail_at_end:
            raise Boom("the call")

    return MiniAgent(replier, alias="replier")


def _content(index: int, item: Item) -> str:
    return "".join(item.tokens) if item.kind != "resolved" or item.external else f"m{index}"


async def _stream_item(index: int, item: Item, writer: MessageWriter) -> None:
    for token in item.tokens:
        await _checkpoints(item.checkpoints)
        writer.send(token)
    if item.kind == "fails":
        writer.fail(Boom(f"message {index}"))
    else:
        writer.finish()


@PROPERTY
@given(
    spec=st.lists(items, max_size=6),
    fail_at_end=st.booleans(),
    errors_as_messages=st.booleans(),
    first_is_late=st.booleans(),
    late=st.lists(st.one_of(st.none(), st.integers(1, 6)), min_size=1, max_size=4),
)
async def test_late_consumers_see_what_the_first_consumer_saw(
    spec: list[Item],
    fail_at_end: bool,
    errors_as_messages: bool,
    first_is_late: bool,
    late: list[int | None],
) -> None:
    # The model: messages up to the first failing one, then its error; else all, then the call's failure (an
    # ErrorMessage with errors_as_messages).  Failures past the first one reached stay unobserved.
    first_failure = next((index for index, item in enumerate(spec) if item.kind == "fails"), None)
    reached = spec if first_failure is None else spec[:first_failure]
    expected_contents = [_content(index, item) for index, item in enumerate(reached)]
    failures = sum(item.kind == "fails" for item in spec) + fail_at_end
    if first_failure is None and fail_at_end and errors_as_messages:
        expected_contents.append("Boom: the call")
    expected_error = None if first_failure is None and not (fail_at_end and not errors_as_messages) else Boom
    unobserved = failures - (1 if failures else 0)

    outcomes: dict[str, Outcome] = {}

    async def run() -> None:
        async with MiniAgents(errors_as_messages=errors_as_messages) as ma:
            externals: list[tuple[int, Item, MessagePromise, MessageWriter]] = []
            for index, item in enumerate(spec):
                if item.external:
                    promise, writer = MessagePromise.open()
                    externals.append((index, item, promise, writer))
            call = _replier(spec, fail_at_end, [promise for _, _, promise, _ in externals]).initiate_call()
            call.finish()
            replies = call.reply_sequence()

            async def finish_externals() -> None:
                while not replies.done:  # the sequence completes while these may still stream
                    await anyio.lowlevel.checkpoint()
                for index, item, _, writer in externals:
                    await _stream_item(index, item, writer)

            async def first() -> None:
                if first_is_late:
                    while not replies.done:
                        await anyio.lowlevel.checkpoint()
                outcomes["first"] = await _consume(replies)

            async with anyio.create_task_group() as tg:
                tg.start_soon(finish_externals)
                tg.start_soon(first)
            expected = outcomes["first"]
            assert [message.content for message in expected.messages] == expected_contents
            assert type(expected.error) is (expected_error or type(None))

            # Late consumers, concurrently, some stopping early; then one more, alone.
            async def late_consumer(index: int, stop_after: int | None) -> None:
                outcomes[f"late{index}"] = await _consume(replies, stop_after)

            async with anyio.create_task_group() as tg:
                for index, stop_after in enumerate(late):
                    tg.start_soon(late_consumer, index, stop_after)
            last = await _consume(replies)
            assert last.messages == expected.messages
            assert last.error is expected.error  # the same exception object
            for index, stop_after in enumerate(late):
                outcome = outcomes[f"late{index}"]
                if stop_after is None or stop_after > len(expected.messages):
                    assert outcome.messages == expected.messages
                    assert outcome.error is expected.error
                else:
                    assert outcome.messages == expected.messages[:stop_after]
                    assert outcome.error is None
            assert ma.statistics().unobserved_errors == unobserved

    with anyio.fail_after(HANG):
        if unobserved:
            with pytest.raises((Boom, BaseExceptionGroup)):  # an unobserved failure is raised at the exit
                await run()
        else:
            await run()
    assert "first" in outcomes


async def test_a_complete_resolved_sequence_is_replayed_by_the_fast_path() -> None:
    messages = [TextMessage(content=f"m{i}") for i in range(3)]
    sequence = MessageSequencePromise.resolved(messages)
    iterator = aiter(sequence)
    assert not isinstance(iterator, _MessageIterator)
    assert [message async for message in iterator] == messages
    assert [message async for message in sequence] == messages
    assert await sequence == tuple(messages)


async def test_an_incomplete_or_failed_sequence_takes_the_general_iterator() -> None:
    async with MiniAgents():
        sequence, writer = MessageSequencePromise.open()
        writer.send(["a", "b"])
        assert isinstance(aiter(sequence), _MessageIterator)  # open
        writer.fail(Boom("late"))
        assert isinstance(aiter(sequence), _MessageIterator)  # failed
        assert (await _consume(sequence)).messages == [TextMessage(content="a"), TextMessage(content="b")]


@pytest.mark.parametrize("how", ["break", "raise", "cancel"])
@pytest.mark.parametrize("stop_after", [1, 2])
async def test_a_consumer_that_leaves_a_replay_midway_leaves_no_warning_task_or_generator(
    stop_after: int, how: str
) -> None:
    sequence = MessageSequencePromise.resolved([TextMessage(content=f"m{i}") for i in range(4)])
    refs: list[weakref.ref[Any]] = []

    async def consume() -> None:
        iterator = aiter(sequence)
        refs.append(weakref.ref(iterator))
        seen = 0
        async for _message in iterator:
            seen += 1
            if seen == stop_after:
                if how == "break":
                    break
                if how == "raise":
                    raise Boom("consumer")
                await anyio.sleep_forever()  # cancelled here, by the scope around the consumer

    tasks = len(anyio.get_running_tasks())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            with anyio.move_on_after(0.01), contextlib.suppress(Boom):
                await consume()
            if (
                how == "break"
            ):  # (an exception's traceback keeps the consumer's frame, and the iterator, alive)
                assert refs[-1]() is None  # closed and freed by reference counting, not by the event loop
            await anyio.lowlevel.checkpoint()  # a closing task scheduled by the event loop would start here
            assert len(anyio.get_running_tasks()) == tasks
        gc.collect()
        assert [ref() for ref in refs] == [None, None, None]
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        assert len(anyio.get_running_tasks()) == tasks
    assert [str(w.message) for w in caught] == []
    assert sequence.statistics().waiting_consumers is False


async def test_an_unread_error_message_is_observed_only_by_the_consumer_that_reaches_it() -> None:
    async def fails(ctx: InteractionContext) -> None:
        ctx.reply(["one", "two"])
        raise Boom("the call")

    with anyio.fail_after(HANG):
        async with MiniAgents(errors_as_messages=True) as ma:
            replies = MiniAgent(fails).inquire()
            while not replies.done:
                await anyio.lowlevel.checkpoint()
            assert (await _consume(replies, stop_after=2)).messages == [
                TextMessage(content="one"),
                TextMessage(content="two"),
            ]
            assert ma.statistics().unobserved_errors == 1  # stopped before the ErrorMessage
            outcome = await _consume(replies)
            assert ma.statistics().unobserved_errors == 0
            assert isinstance(outcome.messages[-1], ErrorMessage)
            # Now observed, the sequence is replayed by the fast path, ErrorMessage included.
            assert not isinstance(aiter(replies), _MessageIterator)
            assert (await _consume(replies)).messages == outcome.messages
