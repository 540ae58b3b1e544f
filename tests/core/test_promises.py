"""Specification of promises: resolve once, stream and replay, on trio and asyncio.

``Promise`` resolves once and every await gives the same value
or raises the same error; ``StreamedPromise`` replays its pieces from the first one for every consumer, late
ones too, and ``await`` gives the whole; ``MessagePromise`` streams ``str`` tokens and resolves to a message
(a message that was not streamed yields its content as one token, none if empty); ``TextMessage.stream()``
takes an async iterable of ``str`` and nothing else; ``MessageSequencePromise`` yields resolved messages in
order, ``promises()`` as soon as each starts, ``await`` gives the tuple, ``as_single_text()`` joins them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import attrs
import pytest
from core_helpers import Boom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miniagents import (
    AgentCallCancelledError,
    BufferStatistics,
    FrozenDict,
    Message,
    MessagePromise,
    MessageSequencePromise,
    MiniAgents,
    NoActiveContextError,
    Promise,
    SequenceClosedError,
    StreamedPromise,
    TextMessage,
    miniagent,
)

pytestmark = pytest.mark.anyio

property_settings = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@attrs.frozen(kw_only=True)
class Note(Message):
    priority: int = 0


async def agen(*items: Any, error: BaseException | None = None) -> AsyncIterator[Any]:
    """An async source that yields *items* with a checkpoint before each, then raises *error* if given."""
    for item in items:
        await anyio.lowlevel.checkpoint()
        yield item
    if error is not None:
        raise error


async def collect(stream: Any) -> list[Any]:
    return [piece async for piece in stream]


async def collect_until_error(stream: Any) -> tuple[list[Any], BaseException | None]:
    seen: list[Any] = []
    try:
        async for piece in stream:
            seen.append(piece)
    except Exception as exc:
        return seen, exc
    return seen, None


def _send_then_raise_inside(writer: Any, piece: str, error: BaseException) -> None:
    """Use *writer* as a context manager, send *piece*, then leave the block with *error*."""
    with writer:
        writer.send(piece)
        raise error


# ================================================================================================== Promise
class TestPromise:
    async def test_resolved_promise_gives_its_value_on_every_await_without_a_context(self) -> None:
        value = ["the", "value"]
        promise = Promise.resolved(value)
        assert promise.done
        assert await promise is value
        assert await promise is value

    async def test_promise_with_a_resolver_needs_an_active_context(self) -> None:
        async def resolver() -> int:
            return 1

        with pytest.raises(NoActiveContextError):
            Promise(resolver)

    async def test_resolver_runs_once_and_every_awaiter_gets_the_same_object(self) -> None:
        calls = 0
        release = anyio.Event()

        async def resolver() -> dict[str, int]:
            nonlocal calls
            calls += 1
            await release.wait()
            return {"answer": 42}

        results: list[Any] = []
        async with MiniAgents():
            promise = Promise(resolver)

            async def awaiter() -> None:
                results.append(await promise)

            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(awaiter)
                await anyio.wait_all_tasks_blocked()
                assert not promise.done
                assert results == []
                release.set()
            results.append(await promise)
        assert calls == 1
        assert len(results) == 6
        assert all(result is results[0] for result in results)
        assert results[0] == {"answer": 42}
        assert promise.done

    async def test_promise_resolves_without_being_awaited(self) -> None:
        async def resolver() -> str:
            return "done"

        async with MiniAgents():
            promise = Promise(resolver)
        assert promise.done
        assert await promise == "done"

    async def test_every_await_of_a_failed_promise_raises_the_same_error_object(self) -> None:
        error = Boom("once")

        async def resolver() -> int:
            raise error

        caught: list[BaseException] = []
        async with MiniAgents():
            promise = Promise(resolver)
            for _ in range(3):
                with pytest.raises(Boom) as info:
                    await promise
                caught.append(info.value)
        assert all(exc is error for exc in caught)
        with pytest.raises(Boom) as info:
            await promise
        assert info.value is error

    async def test_failure_that_nobody_awaited_is_raised_when_the_context_exits(self) -> None:
        async def resolver() -> int:
            raise Boom("unobserved")

        with pytest.raises(Boom, match="unobserved"):
            async with MiniAgents():
                Promise(resolver)

    async def test_failure_that_was_awaited_is_not_raised_again_at_exit(self) -> None:
        async def resolver() -> int:
            raise Boom("observed")

        async with MiniAgents():
            promise = Promise(resolver)
            with pytest.raises(Boom):
                await promise
        assert promise.done


# ========================================================================================== StreamedPromise
def _joined(pieces: Sequence[str]) -> str:
    return "".join(pieces)


class TestStreamedPromise:
    async def test_every_consumer_replays_from_the_first_piece_whenever_it_starts(self) -> None:
        promise, writer = StreamedPromise.open(_joined)
        seen: dict[str, list[str]] = {}

        async def consume(name: str) -> None:
            seen[name] = await collect(promise)

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume, "early")
            await anyio.wait_all_tasks_blocked()
            writer.send("a")
            writer.send("b")
            tg.start_soon(consume, "middle")
            await anyio.wait_all_tasks_blocked()
            writer.send("c")
            writer.close()
        seen["late"] = await collect(promise)
        seen["later"] = await collect(promise)
        assert seen == {name: ["a", "b", "c"] for name in ("early", "middle", "late", "later")}

    async def test_await_gives_the_whole_computed_once(self) -> None:
        calls: list[tuple[str, ...]] = []

        def resolver(pieces: Sequence[str]) -> list[str]:
            calls.append(tuple(pieces))
            return list(pieces)

        promise, writer = StreamedPromise.open(resolver)
        for piece in ("x", "y"):
            writer.send(piece)
        writer.close()
        first = await promise
        assert first == ["x", "y"]
        assert await promise is first
        assert calls == [("x", "y")]

    async def test_await_waits_for_the_end_of_the_stream(self) -> None:
        promise, writer = StreamedPromise.open(_joined)
        result: list[str] = []

        async def awaiter() -> None:
            result.append(await promise)

        async with anyio.create_task_group() as tg:
            tg.start_soon(awaiter)
            writer.send("par")
            await anyio.wait_all_tasks_blocked()
            assert result == []
            writer.send("tial")
            writer.close()
        assert result == ["partial"]

    async def test_source_is_pumped_by_the_context(self) -> None:
        async with MiniAgents():
            promise = StreamedPromise(agen(1, 2, 3), sum)
            assert await collect(promise) == [1, 2, 3]
            assert await promise == 6
        assert await collect(promise) == [1, 2, 3]

    async def test_source_needs_an_active_context(self) -> None:
        source = agen(1)
        with pytest.raises(NoActiveContextError):
            StreamedPromise(source, list)

    @pytest.mark.parametrize("source", [[1, 2], "ab", 3], ids=["list", "str", "int"])
    async def test_source_that_is_not_an_async_iterable_is_rejected_naming_its_type(
        self, source: Any
    ) -> None:
        async with MiniAgents():
            with pytest.raises(TypeError, match=type(source).__name__):
                StreamedPromise(source, list)

    async def test_source_error_reaches_every_consumer_after_the_pieces_before_it(self) -> None:
        error = Boom("source broke")
        async with MiniAgents():
            promise = StreamedPromise(agen("a", "b", error=error), _joined)
            first = await collect_until_error(promise)
            second = await collect_until_error(promise)
            with pytest.raises(Boom) as info:
                await promise
        assert first == (["a", "b"], error)
        assert second == (["a", "b"], error)
        assert info.value is error

    async def test_fail_keeps_the_pieces_already_sent_then_raises_the_same_error(self) -> None:
        promise, writer = StreamedPromise.open(_joined)
        error = Boom("producer failed")
        writer.send("kept")
        writer.fail(error)
        assert writer.closed
        assert await collect_until_error(promise) == (["kept"], error)
        assert await collect_until_error(promise) == (["kept"], error)
        with pytest.raises(Boom) as info:
            await promise
        assert info.value is error

    async def test_sending_after_close_is_rejected_and_close_is_idempotent(self) -> None:
        promise, writer = StreamedPromise.open(_joined)
        writer.send("a")
        writer.close()
        writer.close()
        with pytest.raises(SequenceClosedError):
            writer.send("b")
        writer.fail(Boom("too late"))
        assert await promise == "a"
        assert await collect(promise) == ["a"]

    async def test_writer_as_context_manager_closes_on_normal_exit(self) -> None:
        promise, writer = StreamedPromise.open(_joined)
        with writer:
            writer.send("a")
        assert writer.closed
        assert await promise == "a"

    async def test_writer_as_context_manager_fails_the_stream_with_the_exception(self) -> None:
        promise, writer = StreamedPromise.open(_joined)
        error = Boom("in block")
        with pytest.raises(Boom):
            _send_then_raise_inside(writer, "a", error)
        assert await collect_until_error(promise) == (["a"], error)

    async def test_a_consumer_that_stops_early_affects_nobody_else(self) -> None:
        promise, writer = StreamedPromise.open(_joined)
        others: list[list[str]] = []

        async def quitter() -> None:
            async for piece in promise:
                assert piece == "a"
                break

        async def cancelled_consumer() -> None:
            with anyio.CancelScope() as scope:
                scope.cancel()
                await collect(promise)

        async def full() -> None:
            others.append(await collect(promise))

        async with anyio.create_task_group() as tg:
            tg.start_soon(full)
            tg.start_soon(quitter)
            tg.start_soon(cancelled_consumer)
            writer.send("a")
            await anyio.wait_all_tasks_blocked()
            writer.send("b")
            writer.close()
        assert others == [["a", "b"]]
        assert await promise == "ab"

    async def test_statistics_are_a_snapshot_of_the_stream(self) -> None:
        promise, writer = StreamedPromise.open(_joined)
        before = promise.statistics()
        assert before == BufferStatistics(pieces=0, done=False, failed=False, waiting_consumers=False)

        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, promise)
            await anyio.wait_all_tasks_blocked()
            assert promise.statistics().waiting_consumers
            writer.send("a")
            writer.send("b")
            middle = promise.statistics()
            writer.close()
        after = promise.statistics()

        assert before.pieces == 0  # an earlier snapshot does not change
        assert (middle.pieces, middle.done, middle.failed) == (2, False, False)
        assert after == BufferStatistics(pieces=2, done=True, failed=False, waiting_consumers=False)
        with pytest.raises(AttributeError):
            after.pieces = 5  # type: ignore[misc]

    async def test_statistics_report_a_failure(self) -> None:
        promise, writer = StreamedPromise.open(_joined)
        writer.send("a")
        writer.fail(Boom())
        stats = promise.statistics()
        assert (stats.pieces, stats.done, stats.failed) == (1, True, True)
        assert promise.done
        await collect_until_error(promise)

    @property_settings
    @given(
        pieces=st.lists(st.integers(), max_size=12),
        consumers=st.lists(
            st.tuples(
                st.integers(min_value=0, max_value=12), st.none() | st.integers(min_value=0, max_value=12)
            ),
            min_size=1,
            max_size=6,
        ),
    )
    async def test_any_consumers_starting_at_any_point_see_the_same_pieces(
        self, pieces: list[int], consumers: list[tuple[int, int | None]]
    ) -> None:
        promise, writer = StreamedPromise.open(list)
        seen: dict[int, list[int]] = {}

        async def consume(index: int, stop_after: int | None) -> None:
            got: list[int] = []
            async for piece in promise:
                if stop_after is not None and len(got) == stop_after:
                    break
                got.append(piece)
            seen[index] = got

        async with anyio.create_task_group() as tg:
            for step in range(len(pieces) + 1):
                for index, (start, stop_after) in enumerate(consumers):
                    if min(start, len(pieces)) == step:
                        tg.start_soon(consume, index, stop_after)
                await anyio.lowlevel.checkpoint()
                if step < len(pieces):
                    writer.send(pieces[step])
            writer.close()
        for index, (_, stop_after) in enumerate(consumers):
            expected = pieces if stop_after is None else pieces[:stop_after]
            assert seen[index] == expected
        assert await collect(promise) == pieces
        assert await promise == pieces


# =========================================================================================== MessagePromise
class TestMessagePromise:
    async def test_known_beforehand_holds_frozen_fields_before_the_first_token(self) -> None:
        promise, writer = MessagePromise.open(role="assistant", model="m", stop=["\n"])
        assert isinstance(promise.known_beforehand, FrozenDict)
        assert promise.known_beforehand == {"role": "assistant", "model": "m", "stop": ("\n",)}
        assert not promise.done
        writer.finish()

    async def test_tokens_stream_and_replay_for_every_consumer(self) -> None:
        promise, writer = MessagePromise.open(role="assistant")
        seen: list[list[str]] = []

        async def consume() -> None:
            seen.append(await collect(promise))

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            writer.send("Hel")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(consume)
            writer.send("lo")
            writer.finish()
        seen.append(await collect(promise))
        assert seen == [["Hel", "lo"]] * 3

    async def test_finish_resolves_to_the_message_with_the_joined_content_and_all_fields(self) -> None:
        promise, writer = MessagePromise.open(role="assistant", model="m", finish_reason="unknown")
        writer.send("Hello, ")
        writer.send("world")
        message = writer.finish(finish_reason="stop", usage={"tokens": 2})
        assert type(message) is TextMessage
        assert message.content == "Hello, world"
        assert message.fields() == {
            "content": "Hello, world",
            "role": "assistant",
            "model": "m",
            "finish_reason": "stop",
            "usage": {"tokens": 2},
        }
        assert await promise is message
        assert await promise is message
        assert promise.done

    async def test_message_class_decides_the_class_of_the_resolved_message(self) -> None:
        promise, writer = MessagePromise.open(message_class=Note, priority=3)
        writer.send("n")
        message = writer.finish()
        assert type(message) is Note
        assert message == Note(content="n", priority=3)
        assert await promise is message

    async def test_non_str_token_is_rejected_at_once_naming_its_type(self) -> None:
        promise, writer = MessagePromise.open()
        writer.send("ok")
        with pytest.raises(TypeError, match="int"):
            writer.send(42)  # type: ignore[arg-type]
        writer.finish()
        assert await collect(promise) == ["ok"]

    async def test_sending_or_finishing_after_finish_is_rejected(self) -> None:
        promise, writer = MessagePromise.open()
        writer.finish()
        with pytest.raises(SequenceClosedError):
            writer.send("late")
        with pytest.raises(SequenceClosedError):
            writer.finish()
        writer.fail(Boom("ignored once finished"))
        assert await promise == TextMessage(content="")

    async def test_fail_keeps_the_tokens_already_sent_visible_then_raises(self) -> None:
        promise, writer = MessagePromise.open(role="assistant")
        error = Boom("stream cut")
        seen: list[tuple[list[str], BaseException | None]] = []

        async def consume() -> None:
            seen.append(await collect_until_error(promise))

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            writer.send("par")
            writer.send("tial")
            await anyio.wait_all_tasks_blocked()
            writer.fail(error)
        seen.append(await collect_until_error(promise))
        assert seen == [(["par", "tial"], error)] * 2
        with pytest.raises(Boom) as info:
            await promise
        assert info.value is error
        assert writer.closed

    async def test_writer_as_context_manager_finishes_or_fails(self) -> None:
        ok, ok_writer = MessagePromise.open()
        with ok_writer:
            ok_writer.send("fine")
        assert await ok == TextMessage(content="fine")

        bad, bad_writer = MessagePromise.open()
        error = Boom("inside")
        with pytest.raises(Boom):
            _send_then_raise_inside(bad_writer, "half", error)
        assert await collect_until_error(bad) == (["half"], error)

    @pytest.mark.parametrize(
        "message",
        [
            TextMessage(content="whole content"),
            Message(content="plain", role="user"),
            Note(content="note", priority=1),
        ],
        ids=lambda m: type(m).__name__,
    )
    async def test_a_message_that_was_not_streamed_yields_its_content_as_one_token(
        self, message: Message
    ) -> None:
        promise = MessagePromise.resolved(message)
        assert promise.done
        assert await collect(promise) == [message.content]
        assert await collect(promise) == [message.content]
        assert await promise is message

    async def test_a_message_with_empty_content_yields_no_token(self) -> None:
        message = Message(content="", role="tool")
        promise = MessagePromise.resolved(message)
        assert await collect(promise) == []
        assert await promise is message

    async def test_message_promises_cannot_be_constructed_directly(self) -> None:
        with pytest.raises(TypeError):
            MessagePromise()

    async def test_a_writer_left_open_when_its_agent_call_ends_fails_the_message(self) -> None:
        @miniagent
        async def forgetful(ctx: Any) -> None:
            promise, writer = MessagePromise.open()
            writer.send("started")
            ctx.reply(promise)

        async with MiniAgents():
            replies = forgetful.inquire()
            async for promise in replies.promises():
                tokens, error = await collect_until_error(promise)
                assert tokens == ["started"]
                assert isinstance(error, AgentCallCancelledError)
                break
            with pytest.raises(AgentCallCancelledError):
                await replies


# ======================================================================================= TextMessage.stream
class TestMessageStream:
    async def test_stream_of_str_tokens_becomes_a_message_promise(self) -> None:
        async with MiniAgents():
            promise = TextMessage.stream(agen("Hel", "lo", "!"), role="assistant", model="m")
            assert isinstance(promise, MessagePromise)
            assert promise.known_beforehand == {"role": "assistant", "model": "m"}
            assert await collect(promise) == ["Hel", "lo", "!"]
            message = await promise
        assert message == TextMessage(content="Hello!", role="assistant", model="m")
        assert await collect(promise) == ["Hel", "lo", "!"]

    async def test_stream_on_a_subclass_resolves_to_that_subclass(self) -> None:
        async with MiniAgents():
            message = await Note.stream(agen("a", "b"), priority=4)
        assert type(message) is Note
        assert message == Note(content="ab", priority=4)

    async def test_empty_stream_resolves_to_an_empty_message_with_no_tokens(self) -> None:
        async with MiniAgents():
            promise = TextMessage.stream(agen())
            assert await collect(promise) == []
            assert await promise == TextMessage(content="")

    async def test_stream_is_pumped_even_if_nobody_consumes_it(self) -> None:
        async with MiniAgents():
            promise = TextMessage.stream(agen("x", "y"))
        assert promise.done
        assert await promise == TextMessage(content="xy")

    @pytest.mark.parametrize(
        ("tokens", "type_name"),
        [
            ("a plain string", "str"),
            (["a", "list"], "list"),
            (("a", "tuple"), "tuple"),
            ((token for token in ["a", "generator"]), "generator"),
            (None, "NoneType"),
            (agen, "function"),
        ],
        ids=["str", "list", "tuple", "generator", "None", "async-generator-function"],
    )
    async def test_anything_but_an_async_iterable_is_rejected_at_once_naming_it(
        self, tokens: Any, type_name: str
    ) -> None:
        async with MiniAgents():
            with pytest.raises(TypeError, match=type_name):
                TextMessage.stream(tokens)

    async def test_a_coroutine_is_rejected_at_once(self) -> None:
        async def tokens() -> str:
            return "not a stream"

        coroutine = tokens()
        try:
            async with MiniAgents():
                with pytest.raises(TypeError, match="coroutine"):
                    TextMessage.stream(coroutine)  # type: ignore[arg-type]
        finally:
            coroutine.close()

    async def test_a_non_str_token_fails_the_promise_with_type_error_after_earlier_tokens(self) -> None:
        async with MiniAgents():
            promise = TextMessage.stream(agen("fine", 7, "never"))
            tokens, error = await collect_until_error(promise)
            assert tokens == ["fine"]
            assert isinstance(error, TypeError)
            assert "int" in str(error)
            with pytest.raises(TypeError) as info:
                await promise
            assert info.value is error

    async def test_an_error_in_the_token_source_reaches_consumers_after_the_tokens_before_it(self) -> None:
        error = Boom("upstream")
        async with MiniAgents():
            promise = TextMessage.stream(agen("a", "b", error=error))
            assert await collect_until_error(promise) == (["a", "b"], error)
            with pytest.raises(Boom) as info:
                await promise
            assert info.value is error

    async def test_stream_needs_an_active_context(self) -> None:
        with pytest.raises(NoActiveContextError):
            TextMessage.stream(agen("x"))


# ================================================================================== MessageSequencePromise
class TestMessageSequencePromise:
    async def test_iteration_yields_resolved_messages_in_order(self) -> None:
        given_message = Message(content="m", role="user")
        async with MiniAgents():
            seq, writer = MessageSequencePromise.open()
            streaming, token_writer = MessagePromise.open(role="assistant")
            writer.send("a")
            writer.send(given_message)
            writer.send({"content": "from dict", "role": "system"})
            writer.send(["b", ["c", TextMessage(content="d")]])
            writer.send(streaming)
            writer.send(agen("e", "f"))
            writer.finish()
            token_writer.send("stre")
            token_writer.send("amed")
            token_writer.finish()
            messages = await collect(seq)
        assert messages == [
            TextMessage(content="a"),
            given_message,
            Message(content="from dict", role="system"),
            TextMessage(content="b"),
            TextMessage(content="c"),
            TextMessage(content="d"),
            TextMessage(content="streamed", role="assistant"),
            TextMessage(content="e"),
            TextMessage(content="f"),
        ]
        assert messages[1] is given_message
        assert all(isinstance(message, Message) for message in messages)

    async def test_await_gives_a_tuple_of_every_message(self) -> None:
        async with MiniAgents():
            seq, writer = MessageSequencePromise.open()
            writer.send(["one", "two"])
            writer.finish()
            result = await seq
            assert result == (TextMessage(content="one"), TextMessage(content="two"))
            assert type(result) is tuple
            assert await seq == result

    async def test_as_single_text_joins_the_contents(self) -> None:
        async with MiniAgents():
            seq, writer = MessageSequencePromise.open()
            writer.send(["one", Message(content="two", role="user"), "three"])
            writer.finish()
            assert await seq.as_single_text() == "one\n\ntwo\n\nthree"
            assert await seq.as_single_text(separator=" | ") == "one | two | three"

    async def test_as_single_text_of_an_empty_sequence_is_empty(self) -> None:
        assert await MessageSequencePromise.resolved([]).as_single_text() == ""

    async def test_promises_yields_each_message_as_soon_as_it_starts(self) -> None:
        async with MiniAgents():
            seq, writer = MessageSequencePromise.open()
            streaming, token_writer = MessagePromise.open(role="assistant")
            writer.send("before")
            writer.send(streaming)
            writer.send("after")
            writer.finish()

            iterator = seq.promises()
            first = await iterator.__anext__()
            assert isinstance(first, MessagePromise)
            assert await collect(first) == ["before"]
            second = await iterator.__anext__()
            assert second is streaming
            assert not second.done
            token_writer.send("tok")
            token_writer.finish()
            assert await collect(second) == ["tok"]
            third = await iterator.__anext__()
            assert await third == TextMessage(content="after")
            with pytest.raises(StopAsyncIteration):
                await iterator.__anext__()

    async def test_promises_of_non_streamed_messages_yield_their_content_as_one_token(self) -> None:
        seq = MessageSequencePromise.resolved([TextMessage(content="abc"), Message(content="")])
        token_lists = [await collect(promise) async for promise in seq.promises()]
        assert token_lists == [["abc"], []]

    async def test_late_and_concurrent_consumers_replay_the_whole_sequence(self) -> None:
        seen: list[list[str]] = []
        async with MiniAgents():
            seq, writer = MessageSequencePromise.open()

            async def consume() -> None:
                seen.append([str(message) async for message in seq])

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await anyio.wait_all_tasks_blocked()
                writer.send("1")
                tg.start_soon(consume)
                await anyio.wait_all_tasks_blocked()
                writer.send(["2", "3"])
                writer.finish()
            await consume()
        await consume()
        assert seen == [["1", "2", "3"]] * 4
        assert [await collect(promise) async for promise in seq.promises()] == [["1"], ["2"], ["3"]]

    async def test_failure_reaches_every_consumer_after_the_messages_before_it(self) -> None:
        error = Boom("producer failed")
        async with MiniAgents():
            seq, writer = MessageSequencePromise.open()
            writer.send(["x", "y"])
            writer.fail(error)
            assert await collect_until_error(seq) == (
                [TextMessage(content="x"), TextMessage(content="y")],
                error,
            )
            promises, via_promises = await collect_until_error(seq.promises())
            assert [await promise for promise in promises] == [
                TextMessage(content="x"),
                TextMessage(content="y"),
            ]
            with pytest.raises(Boom) as via_await:
                await seq
            with pytest.raises(Boom) as via_text:
                await seq.as_single_text()
        assert via_promises is error
        assert via_await.value is error
        assert via_text.value is error

    async def test_a_failed_message_promise_fails_the_consumers_at_that_message(self) -> None:
        error = Boom("token stream broke")
        async with MiniAgents():
            seq, writer = MessageSequencePromise.open()
            broken, token_writer = MessagePromise.open()
            writer.send(["ok", broken, "unreached by iteration"])
            writer.finish()
            token_writer.send("par")
            token_writer.fail(error)
            messages, raised = await collect_until_error(seq)
        assert messages == [TextMessage(content="ok")]
        assert raised is error

    async def test_sending_after_finish_is_rejected(self) -> None:
        async with MiniAgents():
            seq, writer = MessageSequencePromise.open()
            writer.send("a")
            writer.finish()
            with pytest.raises(SequenceClosedError):
                writer.send("b")
            with pytest.raises(SequenceClosedError):
                writer.send_out_of_order("c")
            assert await seq == (TextMessage(content="a"),)

    async def test_unsupported_values_are_rejected_when_sent(self) -> None:
        async with MiniAgents():
            seq, writer = MessageSequencePromise.open()
            with pytest.raises(TypeError, match="int"):
                writer.send(42)  # type: ignore[arg-type]
            writer.finish()
            assert await seq == ()

    async def test_open_needs_an_active_context(self) -> None:
        with pytest.raises(NoActiveContextError):
            MessageSequencePromise.open()

    async def test_cannot_be_constructed_directly(self) -> None:
        with pytest.raises(TypeError):
            MessageSequencePromise()

    async def test_resolved_sequence_needs_no_context_and_replays(self) -> None:
        messages = [TextMessage(content="a"), Note(content="b", priority=1)]
        seq = MessageSequencePromise.resolved(messages)
        assert seq.done
        assert await collect(seq) == messages
        assert await collect(seq) == messages
        assert await seq == tuple(messages)
        assert (await seq)[1] is messages[1]
        assert await seq.as_single_text() == "a\n\nb"

    async def test_resolved_sequence_accepts_only_messages(self) -> None:
        with pytest.raises(TypeError, match="str"):
            MessageSequencePromise.resolved(["not a message"])  # type: ignore[list-item]

    async def test_statistics_count_the_messages_and_report_completion(self) -> None:
        async with MiniAgents():
            seq, writer = MessageSequencePromise.open()
            writer.send(["a", "b"])
            open_stats = seq.statistics()
            writer.finish()
            done_stats = seq.statistics()
            await seq
        assert (open_stats.pieces, open_stats.done, open_stats.failed) == (2, False, False)
        assert (done_stats.pieces, done_stats.done, done_stats.failed) == (2, True, False)

    @property_settings
    @given(
        batches=st.lists(st.lists(st.text(max_size=3), max_size=3), max_size=6),
        starts=st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=5),
        use_promises=st.booleans(),
        with_streaming=st.booleans(),
    )
    async def test_consumers_starting_at_any_point_see_the_same_messages(
        self, batches: list[list[str]], starts: list[int], use_promises: bool, with_streaming: bool
    ) -> None:
        # Each batch is sent at its own step; with_streaming adds a message after each batch whose token only
        # arrives at the next step, so consumers also wait on a message that has started but not finished.
        expected: list[str] = []
        for step, batch in enumerate(batches):
            expected.extend(batch)
            if with_streaming:
                expected.append(f"streamed {step}")
        seen: dict[int, list[str]] = {}
        async with MiniAgents():
            seq, writer = MessageSequencePromise.open()
            pending: Any = None

            async def consume(index: int) -> None:
                if use_promises:
                    seen[index] = [str(await promise) async for promise in seq.promises()]
                else:
                    seen[index] = [str(message) async for message in seq]

            async with anyio.create_task_group() as tg:
                for step in range(len(batches) + 1):
                    for index, start in enumerate(starts):
                        if min(start, len(batches)) == step:
                            tg.start_soon(consume, index)
                    await anyio.lowlevel.checkpoint()
                    if pending is not None:
                        pending.send(f"streamed {step - 1}")
                        pending.finish()
                        pending = None
                    if step < len(batches):
                        writer.send(batches[step])
                        if with_streaming:
                            promise, pending = MessagePromise.open()
                            writer.send(promise)
                writer.finish()
            late = [str(message) for message in await seq]
        assert all(seen[index] == expected for index in range(len(starts)))
        assert late == expected
