"""The on_persist_message hook: once per distinct message, nested first, failures never swallowed; handlers run
in their own context and are drained before the block closes its shared resources."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from core_helpers import Boom, echo, ignores_input
from hypothesis import given, settings
from hypothesis import strategies as st

from miniagents import (
    CallRecord,
    InteractionContext,
    Message,
    MessagePromise,
    MessageSequencePromise,
    MiniAgents,
    TextMessage,
    miniagent,
)
from miniagents._ledger import ErrorLedger
from miniagents._sequence_builder import SequenceBuilder

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


# -- call records ---------------------------------------------------------------------------------------------
async def test_every_finished_call_is_recorded_after_its_messages() -> None:
    events: list[str] = []

    @miniagent
    async def child(ctx: InteractionContext, n: int) -> None:
        ctx.reply(f"child {n}")
        if n == 2:
            raise Boom("child failed")

    @miniagent
    async def parent(ctx: InteractionContext) -> None:
        ctx.reply(await child.inquire("in", n=1))
        try:
            await child.inquire(n=2)
        except Boom:
            ctx.reply("handled")

    async with MiniAgents(
        on_persist_message=lambda m: events.append(f"message {m.content}"),
        on_call_finished=lambda r: events.append(f"call {r.agent_alias} {r.outcome}"),
    ) as mas:
        records = []
        mas.on_call_finished(records.append)
        await parent.inquire("go")

    assert events.index("message child 1") < events.index("call child completed")
    assert events[-1] == "call parent completed"
    by_outcome = {(r.agent_alias, r.outcome): r for r in records}
    assert set(by_outcome) == {("child", "completed"), ("child", "failed"), ("parent", "completed")}
    failed = by_outcome["child", "failed"]
    parent_record = by_outcome["parent", "completed"]
    assert failed.parent_call_id == parent_record.call_id
    assert parent_record.parent_call_id is None
    assert failed.error_type == "Boom" and failed.error == "Boom: child failed"
    assert dict(failed.kwargs) == {"n": 2}
    assert [m.content for m in parent_record.input_messages] == ["go"]
    assert [m.content for m in parent_record.reply_messages] == ["child 1", "handled"]
    assert len({r.run_id for r in records}) == 1 and records[0].run_id == mas.run_id
    assert all(r.started_at <= r.finished_at for r in records)


async def test_cancelled_calls_are_recorded_as_cancelled() -> None:
    records = []

    @miniagent
    async def forever(ctx: InteractionContext) -> None:
        ctx.reply("before")
        await anyio.sleep_forever()

    async with MiniAgents(on_call_finished=records.append):
        call = forever.initiate_call()
        replies = call.reply_sequence()
        async for _ in replies:
            break
        call.cancel()
    assert [(r.outcome, [m.content for m in r.reply_messages]) for r in records] == [
        ("cancelled", ["before"])
    ]


async def test_a_store_object_gets_messages_and_calls_and_is_entered_and_exited() -> None:
    class MemoryStore:
        def __init__(self) -> None:
            self.log: list[str] = []

        async def __aenter__(self) -> MemoryStore:
            self.log.append("open")
            return self

        async def __aexit__(self, *exc: object) -> None:
            self.log.append("close")

        async def on_persist_message(self, message: Message) -> None:
            self.log.append(message.content)

        def on_call_finished(self, record: object) -> None:
            self.log.append("call")

    store = MemoryStore()
    async with MiniAgents(store=store):
        await repeater.inquire("x")
    assert store.log == ["open", "x", "nested", "n2", "holder", "call", "close"]


class BatchStore:
    """Takes messages in batches (``on_persist_messages``); logs what it got, in order."""

    def __init__(self, *, fail_on: str | None = None) -> None:
        self.batches: list[list[Message]] = []
        self.log: list[str] = []
        self.fail_on = fail_on

    def on_persist_message(self, message: Message) -> None:
        raise AssertionError("a store with on_persist_messages gets batches only")

    async def on_persist_messages(self, messages: list[Message]) -> None:
        await anyio.sleep(0)
        self.batches.append(list(messages))
        self.log.extend(m.content for m in messages)
        if self.fail_on is not None and any(m.content == self.fail_on for m in messages):
            raise RuntimeError(f"cannot store {self.fail_on}")

    def on_call_finished(self, record: CallRecord) -> None:
        self.log.append(f"call {record.agent_alias}")


@miniagent
async def burst(ctx: InteractionContext, n: int) -> None:
    for i in range(n):
        ctx.reply(f"r{i}")
    ctx.reply(Message(content="holder", inner=TextMessage(content="nested")))


async def test_a_store_with_a_batch_method_gets_every_message_once_in_batches_before_the_call_record() -> (
    None
):
    store = BatchStore()
    one_by_one: list[str] = []
    async with MiniAgents(store=store, on_persist_message=lambda m: one_by_one.append(m.content)):
        await burst.inquire(["a", "b", "a"], n=50)
        await burst.inquire("c", n=3)
    expected = ["a", "b", *(f"r{i}" for i in range(50)), "nested", "holder"]
    expected.append("c")  # its replies r0-r2 and the holder were persisted already
    assert [content for content in store.log if not content.startswith("call")] == one_by_one == expected
    assert store.log.index("holder") < store.log.index("call burst")  # a call's messages come first
    assert store.log.count("call burst") == 2 and store.log[-1] == "call burst"
    assert max(len(batch) for batch in store.batches) > 1  # handed over in batches, not one by one


async def test_a_failing_batch_method_is_raised_when_the_block_exits_and_later_batches_still_come() -> None:
    store = BatchStore(fail_on="r1")

    async def run() -> None:
        async with MiniAgents(store=store):
            await burst.inquire("a", n=3)
            await burst.inquire("later", n=0)

    with pytest.raises(RuntimeError, match="cannot store r1") as info:
        await run()
    assert any("on_persist_messages handler" in note and "batch of" in note for note in info.value.__notes__)
    assert "later" in store.log  # the worker keeps going after a failed batch


async def test_a_handler_hanging_on_one_message_keeps_nothing_from_the_others_when_cancelled() -> None:
    store = BatchStore()
    seen: list[str] = []
    never = anyio.Event()

    async def hangs_on_r3(message: Message) -> None:
        if message.content == "r3":
            await never.wait()  # until the block's cancellation ends it
        seen.append(message.content)

    @miniagent
    async def replies_then_hangs(ctx: InteractionContext) -> None:
        for i in range(6):
            ctx.reply(f"r{i}")
        await anyio.sleep_forever()

    with anyio.move_on_after(0.05):
        async with MiniAgents(store=store, on_persist_message=hangs_on_r3):
            await replies_then_hangs.inquire()
    expected = [f"r{i}" for i in range(6)]
    assert [c for c in store.log if not c.startswith("call")] == expected  # every message, once
    assert seen == [c for c in expected if c != "r3"]  # the grace loop went on after the hung message, once
    assert store.log[-1] == "call replies_then_hangs"


def test_a_store_without_the_handler_method_is_rejected() -> None:
    with pytest.raises(TypeError, match="on_persist_message"):
        MiniAgents(store=object())  # type: ignore[arg-type]


async def test_call_records_never_carry_secrets() -> None:
    records = []

    @miniagent
    async def configured(ctx: InteractionContext, **options: object) -> None:
        ctx.reply("ok")

    async with MiniAgents(on_call_finished=records.append):
        await configured.inquire(
            api_key="sk-SENTINEL",
            model="m",
            extra_headers={"Authorization": "Bearer sk-SENTINEL", "X-Trace": "t"},
            nested=[{"refresh_token": "sk-SENTINEL"}],
        )
    (record,) = records
    assert "sk-SENTINEL" not in repr(record)
    assert record.kwargs["api_key"] == "<redacted>"
    assert record.kwargs["model"] == "m"
    assert dict(record.kwargs["extra_headers"]) == {"Authorization": "<redacted>", "X-Trace": "t"}
    assert record.kwargs["nested"][0]["refresh_token"] == "<redacted>"


async def test_a_cancelled_block_still_hands_everything_to_the_handlers() -> None:
    messages: list[str] = []
    records = []

    @miniagent
    async def hangs(ctx: InteractionContext) -> None:
        ctx.reply("before the cancellation")
        await anyio.sleep_forever()

    with anyio.move_on_after(0.05):
        async with MiniAgents(
            on_persist_message=lambda m: messages.append(m.content), on_call_finished=records.append
        ):
            await hangs.inquire("input")
    assert messages == ["input", "before the cancellation"]
    assert [r.outcome for r in records] == ["cancelled"]


@pytest.mark.parametrize(
    "name",
    [
        "api_key",
        "apiKey",
        "x-api-key",
        "client_secret",
        "password",
        "Authorization",
        "token",
        "access_token",
        "refresh-token",
        "aws_credentials",
        "Cookie",
    ],
)
def test_secret_looking_names_are_redacted(name: str) -> None:
    from miniagents import FrozenDict
    from miniagents._records import redact

    assert redact(FrozenDict({name: "s3cret"}))[name] == "<redacted>"


@pytest.mark.parametrize("name", ["max_tokens", "tokens", "model", "temperature", "tokenizer", "keyword"])
def test_ordinary_names_are_kept(name: str) -> None:
    from miniagents import FrozenDict
    from miniagents._records import redact

    assert redact(FrozenDict({name: 7}))[name] == 7


class _Refused(Exception):
    pass


def _sends(inline: bool, ops: list[tuple[int, str, bool]], refused: set[str]) -> list[tuple[Any, ...]]:
    """What the persistence hook saw (and how many pieces were appended by then) for *ops* sent one by one."""
    log: list[tuple[Any, ...]] = []

    def persist(message: Message) -> None:
        log.append(("persist", message.content, len(builder.buffer.pieces)))
        if message.content in refused:
            raise _Refused(message.content)

    context = SimpleNamespace(_persists=True, _persist=persist, _activation=5, _ledger=ErrorLedger())
    builder = SequenceBuilder(context, None)  # type: ignore[arg-type]
    pending = []
    for kind, content, marked in ops:
        item: Message | MessagePromise
        if kind == 0:
            item = TextMessage(content=content)
            if marked:  # queued by this activation already (forwarded from another sequence)
                object.__setattr__(item, "_persisted_in", 5)
        elif kind == 1:
            item = MessagePromise.resolved(TextMessage(content=content))
        else:
            item, writer = MessagePromise.open()
            pending.append((content, writer))
        try:
            builder.send(item) if inline else builder._append(item)
            log.append(("sent", content, len(builder.buffer.pieces)))
        except _Refused as exc:
            log.append(("raised", str(exc), len(builder.buffer.pieces)))
    for content, writer in pending:
        writer.send(content)
        try:
            writer.finish()
        except _Refused as exc:
            log.append(("raised on resolve", str(exc)))
    return log


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(st.tuples(st.integers(0, 2), st.sampled_from("abcd"), st.booleans()), max_size=12),
    refused=st.sets(st.sampled_from("abcd")),
)
def test_a_single_item_sent_with_persistence_on_is_appended_and_persisted_exactly_as_the_general_path_does(
    ops: list[tuple[int, str, bool]], refused: set[str]
) -> None:
    # send() inlines the one-ready-item case: append first (consumers see it), then the hook; a marked
    # message skips the hook; a promise reaches it when it resolves; a hook that raises leaves the item sent.
    assert _sends(True, ops, refused) == _sends(False, ops, refused)


# -- the block and persistence -------------------------------------------------------------------------------
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


async def test_a_pipeline_s_records_share_the_tuple_of_the_messages_passed_along() -> None:
    """A call's replies, when they are the next call's input, are one tuple in both records (and what awaiting
    the replies returns): the store maps it to ids once."""
    records: list[CallRecord] = []
    async with MiniAgents(on_persist_message=lambda m: None, on_call_finished=records.append):
        first = echo.inquire(["a", "b"])
        second = echo.inquire(first)
        replies = await first
        await second
    by_call = {record.call_id: record for record in records}
    first_record, second_record = sorted(by_call.values(), key=lambda r: r.call_id)
    assert first_record.reply_messages is second_record.input_messages
    assert replies is first_record.reply_messages
