"""SQLiteStore: what it stores, how it reads back, and its guarantees: everything stored exactly once when agents
fail or are cancelled, a failing store never changes agent results, a slow one never slows agents (both anyio
backends)."""

from __future__ import annotations

import math
import sqlite3
import sys
import time
from pathlib import Path

import anyio
import attrs
import pytest

from miniagents import (
    AgentCallCancelledError,
    CallRecord,
    InteractionContext,
    Message,
    MessagePromise,
    MessageSequencePromise,
    MiniAgents,
    TextMessage,
    miniagent,
)
from miniagents.persistence import SCHEMA_VERSION, SchemaVersionError, SQLiteStore, StoreReader
from miniagents.persistence._inspect import main as inspect_main
from miniagents.persistence._schema import migrate

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

pytestmark = pytest.mark.anyio


@attrs.frozen(kw_only=True)
class Note(Message):
    priority: int = 0
    tags: tuple[str, ...] = ()


class Boom(Exception):
    pass


@miniagent
async def echo(ctx: InteractionContext, prefix: str = "echo") -> None:
    async for message in ctx.messages:
        ctx.reply(f"{prefix}: {message}")


@miniagent
async def notes(ctx: InteractionContext) -> None:
    inner = Note(content="inner", priority=2, tags=["x"])
    ctx.reply(inner)
    ctx.reply(
        Message(content="holder", inner=inner, more=[TextMessage(content="n2"), inner], by_int={1: inner})
    )


async def _consume(replies: MessageSequencePromise) -> None:
    assert len(await replies) == 100


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for sub in error.exceptions for leaf in _leaves(sub)]
    return [error]


def _db(tmp_path: Path) -> str:
    return str(tmp_path / "run.db")


async def test_typed_round_trip_with_subclasses_and_nested_messages_stored_once(tmp_path: Path) -> None:
    store = SQLiteStore(_db(tmp_path))
    async with MiniAgents(store=store):
        replies = await notes.inquire()
    async with store:
        for message in replies:
            loaded = await store.get(message.hash_key)
            assert loaded == message and type(loaded) is type(message)
            assert loaded is not None and loaded.hash_key == message.hash_key
        holder = await store.get(replies[1].hash_key)
        assert holder is not None and isinstance(holder.inner, Note) and holder.inner.priority == 2
        assert await store.get("0" * 64) is None
    with sqlite3.connect(store.path) as db:
        contents = [row[0] for row in db.execute("SELECT content FROM messages")]
        assert sorted(contents) == ["holder", "inner", "n2"]  # the nested note is one row
        (fields,) = db.execute("SELECT fields FROM messages WHERE content = 'holder'").fetchone()
        assert '"$t":"ref"' in fields and "priority" not in fields  # referenced, not copied
        assert db.execute("SELECT count(*) FROM message_refs").fetchone()[0] == 4


@attrs.frozen(kw_only=True)
class Shout(TextMessage):
    """Content only, like ``TextMessage``: stored on the writer's content-only path under its own class."""


async def test_content_only_messages_of_several_classes_in_one_batch_keep_their_classes_and_order(
    tmp_path: Path,
) -> None:
    @miniagent
    async def mixed(ctx: InteractionContext) -> None:
        for i in range(3000):  # one batch, several multi-row statements per class, classes interleaved
            ctx.reply(Shout(content=f"s{i}") if i % 3 == 0 else f"t{i}")
            if i % 500 == 0:
                ctx.reply(Message(content=f"plain{i}"))  # a content-only base Message, a third class

    store = SQLiteStore(_db(tmp_path))
    async with MiniAgents(store=store):
        replies = await mixed.inquire()
    async with store:
        (call,) = await store.calls(agent_alias="mixed")
        stored = await store.replies(call)
        assert stored == list(replies)
        assert [type(m) for m in stored] == [type(m) for m in replies]
        assert {type(m) for m in stored} == {Shout, TextMessage, Message}
    with sqlite3.connect(store.path) as db:
        classes = dict(db.execute("SELECT class, count(*) FROM messages GROUP BY class").fetchall())
        assert classes == {
            f"{__name__}:Shout": 1000,
            "miniagents._messages:TextMessage": 2000,
            "miniagents._messages:Message": 6,
        }


async def test_schema_is_versioned_wal_and_migrated_from_an_older_version(tmp_path: Path) -> None:
    path = _db(tmp_path)
    with sqlite3.connect(path, isolation_level=None) as db:
        assert migrate(db, 1) == 1  # a database left at version 1
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    async with SQLiteStore(path) as store, MiniAgents(store=store):
        await echo.inquire("x")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "calls_by_alias" in indexes
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(SchemaVersionError):
        async with SQLiteStore(path):
            pass
    with pytest.raises(SchemaVersionError):
        StoreReader(path)


async def test_a_burst_of_messages_costs_few_commits(tmp_path: Path) -> None:
    @miniagent
    async def burst(ctx: InteractionContext) -> None:
        for i in range(5000):
            ctx.reply(f"m{i}")

    store = SQLiteStore(_db(tmp_path), batch_size=1000)
    async with MiniAgents(store=store):
        await burst.inquire()
    stats = store.statistics()
    assert stats.stored_messages == 5000 and stats.stored_calls == 1
    assert stats.commits <= 8, stats


async def test_interaction_graph_parents_kwargs_outcomes_and_order(tmp_path: Path) -> None:
    @miniagent
    async def child(ctx: InteractionContext, n: int) -> None:
        ctx.reply(f"child {n}")
        if n == 2:
            raise Boom("child failed")

    @miniagent
    async def parent(ctx: InteractionContext, when: float) -> None:
        ctx.reply(await child.inquire("in", n=1))
        try:
            await child.inquire(n=2)
        except Boom:
            ctx.reply("handled")

    store = SQLiteStore(_db(tmp_path))
    async with MiniAgents(store=store) as mas:
        await parent.inquire("go", when=math.pi)
    async with store:
        calls = await store.calls(run_id=mas.run_id)
        assert [(c.agent_alias, c.outcome) for c in calls] == [
            ("parent", "completed"),
            ("child", "completed"),
            ("child", "failed"),
        ]
        root, ok, failed = calls
        assert root.parent_call_id is None and ok.parent_call_id == failed.parent_call_id == root.call_id
        assert dict(root.kwargs) == {"when": math.pi} and dict(failed.kwargs) == {"n": 2}
        assert failed.error_type == "Boom" and failed.error == "Boom: child failed"
        assert all(c.started_at <= c.finished_at for c in calls)
        assert [str(m) for m in await store.inputs(root)] == ["go"]
        assert [str(m) for m in await store.replies(root.key)] == ["child 1", "handled"]
        assert [str(m) for m in await store.replies((mas.run_id, failed.call_id))] == ["child 2"]
        assert [c.key for c in await store.children(root)] == [ok.key, failed.key]
        assert [c.key for c in await store.calls(parent_call_id=None)] == [root.key]
        assert [r.run_id for r in await store.runs()] == [mas.run_id]
        with pytest.raises(KeyError):
            await store.replies(("no such run", 1))


async def test_everything_is_stored_when_agents_fail_or_are_cancelled(tmp_path: Path) -> None:
    seen: list[Message] = []
    records: list[CallRecord] = []

    @miniagent
    async def fails(ctx: InteractionContext) -> None:
        ctx.reply("before failure")
        ctx.reply_out_of_order("out of order before failure")
        raise Boom("fails")

    @miniagent
    async def hangs(ctx: InteractionContext) -> None:
        ctx.reply("before cancel")
        promise, writer = MessagePromise.open()
        ctx.reply(promise)
        writer.send("never finished")
        await anyio.sleep_forever()

    @miniagent
    async def unobserved(ctx: InteractionContext) -> None:
        ctx.reply("nobody reads this")
        raise Boom("nobody observes this")

    store = SQLiteStore(_db(tmp_path))
    with pytest.raises(Boom, match="nobody observes this"):  # noqa: PT012 - the block exit raises it
        async with MiniAgents(store=store, on_call_finished=records.append) as mas:
            unobserved.inquire("sent to unobserved")
            with pytest.raises(Boom):  # noqa: PT012
                async for message in fails.inquire("sent to fails"):
                    seen.append(message)
            call = hangs.initiate_call()
            replies = call.send("sent to hangs").reply_sequence()
            with anyio.move_on_after(0.05):
                async for message in replies:
                    seen.append(message)
            call.cancel()
            with pytest.raises(AgentCallCancelledError):  # noqa: PT012
                async for message in replies:
                    seen.append(message)
    stored = StoreReader(store.path).hash_keys()
    sent = {TextMessage(content=c).hash_key for c in ("sent to unobserved", "sent to fails", "sent to hangs")}
    assert {m.hash_key for m in seen} <= stored
    assert sent <= stored
    assert [m.content for m in seen].count("before cancel") == 2  # two consumers
    assert {"before failure", "out of order before failure"} <= {m.content for m in seen}
    for record in records:
        assert {m.hash_key for m in (*record.input_messages, *record.reply_messages)} <= stored
    with StoreReader(store.path) as reader:
        outcomes = sorted(c.outcome for c in reader.calls(run_id=mas.run_id))
    assert outcomes == ["cancelled", "failed", "failed"]


@miniagent
async def hangs_after_reply(ctx: InteractionContext) -> None:
    ctx.reply("before cancel")
    await anyio.sleep_forever()


async def test_a_cancelled_block_still_commits_what_reached_the_store(tmp_path: Path) -> None:
    seen: list[Message] = []
    store = SQLiteStore(_db(tmp_path))
    with anyio.move_on_after(0.05):
        async with MiniAgents(store=store):
            async for message in hangs_after_reply.inquire("sent in a cancelled block"):
                seen.append(message)
    stored = StoreReader(store.path).hash_keys()
    assert {m.hash_key for m in seen} | {TextMessage(content="sent in a cancelled block").hash_key} <= stored


async def test_a_cancelled_block_records_its_cancelled_calls(tmp_path: Path) -> None:
    store = SQLiteStore(_db(tmp_path))
    with anyio.move_on_after(0.05):
        async with MiniAgents(store=store):
            await hangs_after_reply.inquire("sent in a cancelled block")
    with StoreReader(store.path) as reader:
        assert [c.outcome for c in reader.calls()] == ["cancelled"]


async def test_exactly_once_under_100_parallel_agents_and_across_runs(tmp_path: Path) -> None:
    @miniagent
    async def worker(ctx: InteractionContext, index: int) -> None:
        for i in range(50):
            ctx.reply(f"shared {i}")  # the same 50 messages from every agent
            ctx.reply(f"own {index} {i}")
            if i % 10 == 0:
                await anyio.sleep(0)

    store = SQLiteStore(_db(tmp_path), batch_size=64, flush_interval=0.001)
    for _run in range(2):
        async with MiniAgents(store=store), anyio.create_task_group() as tg:
            for index in range(100):
                tg.start_soon(_consume, worker.inquire(f"input {index}", index=index))
    with StoreReader(store.path) as reader, sqlite3.connect(store.path) as db:
        expected = {f"shared {i}" for i in range(50)} | {
            f"own {a} {i}" for a in range(100) for i in range(50)
        }
        expected |= {f"input {a}" for a in range(100)}
        rows = [row[0] for row in db.execute("SELECT content FROM messages")]
        assert len(rows) == len(set(rows)) and set(rows) == expected
        assert reader.message_count() == len(expected)
        assert len(reader.runs()) == 2 and len(reader.calls()) == 200
        call = reader.calls(agent_alias="worker")[0]
        assert len(reader.replies(call)) == 100


async def test_a_failing_store_raises_at_exit_and_never_changes_agent_results(tmp_path: Path) -> None:
    path = _db(tmp_path)
    async with SQLiteStore(path):
        pass  # create the schema, then make one message unstorable
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.content = 'echo: poison'"
            " BEGIN SELECT RAISE(ABORT, 'poisoned message'); END"
        )
    store = SQLiteStore(path)
    with pytest.raises(BaseException) as info:  # noqa: PT011 - checked below
        async with MiniAgents(store=store):
            replies = await echo.inquire(["a", "poison", "b"])
    assert [str(m) for m in replies] == ["echo: a", "echo: poison", "echo: b"]
    errors = _leaves(info.value)
    assert errors and all(isinstance(e, sqlite3.IntegrityError) for e in errors)
    assert all("poisoned message" in str(e) for e in errors)
    notes = [note for e in errors for note in getattr(e, "__notes__", ())]
    assert any("could not store message" in note for note in notes)
    assert any("could not store call" in note for note in notes)  # its call holds the message
    with StoreReader(path) as reader:
        contents = {m.content for m in map(reader.get, reader.hash_keys()) if m is not None}
        assert {"a", "poison", "b", "echo: a", "echo: b"} <= contents  # only the poisoned item was lost
        assert "echo: poison" not in contents
        assert reader.calls() == []


async def test_a_failing_handler_call_is_raised_by_the_runtime_not_swallowed(tmp_path: Path) -> None:
    failures = 0

    def on_commit(keys: object) -> None:
        nonlocal failures
        failures += 1
        raise OSError("monitoring failed")

    store = SQLiteStore(_db(tmp_path), on_commit=on_commit, flush_interval=0)

    @miniagent
    async def slowly(ctx: InteractionContext) -> None:
        for i in range(20):
            ctx.reply(f"s{i}")
            await anyio.sleep(0.005)

    with pytest.raises(BaseException) as info:  # noqa: PT011 - checked below
        async with MiniAgents(store=store):
            assert len(await slowly.inquire()) == 20
    errors = _leaves(info.value)
    assert failures >= 1 and len(errors) == min(failures, 20)  # each raised once (at most 20 are kept)
    assert all(isinstance(e, OSError) and str(e) == "monitoring failed" for e in errors)


async def test_a_slow_store_does_not_slow_agents_and_still_stores_everything(tmp_path: Path) -> None:
    def crawl(keys: object) -> None:
        time.sleep(0.05)

    store = SQLiteStore(_db(tmp_path), batch_size=10, on_commit=crawl)
    started = time.perf_counter()
    async with MiniAgents(store=store):
        replies = await echo.inquire([f"q{i}" for i in range(100)])
        answered = time.perf_counter() - started
    closed = time.perf_counter() - started
    assert [str(m) for m in replies] == [f"echo: q{i}" for i in range(100)]
    assert answered < closed / 2  # the agents finished long before the store caught up
    assert store.statistics().stored_messages == 200


async def test_conversation_rebuilds_a_chat_across_runs(tmp_path: Path) -> None:
    @miniagent
    async def assistant(ctx: InteractionContext) -> None:
        messages = await ctx.messages
        ctx.reply(TextMessage(content=f"answer to {messages[-1]}", role="assistant"))

    store = SQLiteStore(_db(tmp_path))
    history: list[Message] = []
    for turn in ("hello", "how are you"):  # two runs, each resending the whole history
        async with MiniAgents(store=store):
            user = TextMessage(content=turn, role="user")
            history = [*history, user, *await assistant.inquire([*history, user])]
    async with store:
        restored = await store.conversation("assistant")
    assert restored == history
    assert [m.role for m in restored] == ["user", "assistant", "user", "assistant"]
    async with MiniAgents(store=store):  # resume: the restored history goes on
        more = await assistant.inquire([*restored, TextMessage(content="bye", role="user")])
    assert str(more[0]) == "answer to bye"


async def test_store_as_plain_handlers_and_closed_by_hand(tmp_path: Path) -> None:
    store = SQLiteStore(_db(tmp_path))
    async with MiniAgents(
        on_persist_message=store.on_persist_message, on_call_finished=store.on_call_finished
    ):
        await echo.inquire("plain")
    await store.aclose()
    with StoreReader(store.path) as reader:
        assert {m.content for m in map(reader.get, reader.hash_keys()) if m} == {"plain", "echo: plain"}
        assert len(reader.calls()) == 1


async def test_inspect_prints_the_call_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    @miniagent
    async def boss(ctx: InteractionContext) -> None:
        ctx.reply(echo.inquire("x" * 200, prefix="deep"))

    store = SQLiteStore(_db(tmp_path))
    async with MiniAgents(store=store) as mas:
        await boss.inquire("start")
    assert inspect_main(["inspect", store.path, "--width", "20"]) == 0
    out = capsys.readouterr().out
    assert f"run {mas.run_id}" in out and "2 calls" in out
    lines = out.splitlines()
    boss_line = next(i for i, line in enumerate(lines) if " boss() completed" in line)
    echo_line = next(i for i, line in enumerate(lines) if "echo(prefix='deep') completed" in line)
    assert echo_line > boss_line and lines[echo_line].startswith("    #")  # indented under boss
    assert "> TextMessage" in out and "'start'" in out and "…" in out
    assert inspect_main(["inspect", str(tmp_path / "missing.db")]) == 1


async def test_kwargs_passed_by_reference_are_stored_as_descriptions(tmp_path: Path) -> None:
    import httpx

    from miniagents import share_by_reference

    share_by_reference(httpx.AsyncClient)

    @miniagent
    async def configured(ctx: InteractionContext, **options: object) -> None:
        ctx.reply("ok")

    async def helper() -> None:
        pass

    store = SQLiteStore(_db(tmp_path))
    async with httpx.AsyncClient() as client, MiniAgents(store=store):
        await configured.inquire(tools=[configured, helper], http_client=client, n=1)
    with StoreReader(store.path) as reader:
        (call,) = reader.calls()
    assert dict(call.kwargs) == {
        "tools": (
            "<agent 'configured'>",
            "<function test_kwargs_passed_by_reference_are_stored_as_descriptions.<locals>.helper>",
        ),
        "http_client": "<httpx.AsyncClient object>",
        "n": 1,
    }


# -- call records that share their messages (the writer maps a recent tuple once) -----------------------------
@miniagent
async def forward_all(ctx: InteractionContext) -> None:
    async for message in ctx.messages:
        ctx.reply(message)


@miniagent
async def copy_all(ctx: InteractionContext) -> None:
    async for message in ctx.messages:
        ctx.reply(TextMessage(content=message.content))  # equal, not the same object


@pytest.mark.parametrize("stored_before", [0, 7, 40])
async def test_a_pipeline_s_calls_read_back_with_their_own_messages(
    tmp_path: Path, stored_before: int
) -> None:
    """Each call's inputs and replies read back as they were, whether its messages are the same objects as
    another call's, equal copies, or stored already by an earlier run (their ids are then remapped)."""
    path = tmp_path / "pipeline.db"
    contents = [f"p{i}" for i in range(40)]
    if stored_before:
        async with MiniAgents(store=SQLiteStore(path)):
            await forward_all.inquire(contents[:stored_before:-1] + contents[:stored_before])
    async with MiniAgents(store=SQLiteStore(path)) as mas:
        seq = forward_all.inquire(contents)
        seq = copy_all.inquire(seq)
        seq = forward_all.inquire(seq)
        seq = forward_all.inquire([*contents[::-1]])  # the same messages, another order
        await seq
        run_id = mas.run_id
    with StoreReader(path) as reader:
        calls = reader.calls(run_id=run_id)
        assert len(calls) == 4
        expected = [contents] * 3 + [contents[::-1]]
        for call, order in zip(calls, expected, strict=True):
            assert [m.content for m in reader.inputs(call)] == order
            assert [m.content for m in reader.replies(call)] == order


def test_a_later_transaction_reuses_a_recent_call_s_ids_only_as_committed(tmp_path: Path) -> None:
    """A record in a later transaction whose messages equal a recent record's gets that record's ids: the ids
    the rows really have, also when that earlier transaction found some of its messages stored already.

    Drives the writer's transactions directly (in the running store they follow one another within a burst).
    """
    from miniagents.persistence import _writer

    path = str(tmp_path / "recent.db")
    messages = tuple(TextMessage(content=f"r{i}") for i in range(30))
    for message in messages:
        _ = message.hash_key  # the runtime hands messages over with their keys computed
    now = time.time()

    def record(call_id: int, inputs: tuple[Message, ...]) -> CallRecord:
        return CallRecord(
            run_id="run",
            call_id=call_id,
            parent_call_id=None,
            agent_alias="a",
            kwargs={},
            started_at=now,
            finished_at=now,
            outcome="completed",
            input_messages=inputs,
            reply_messages=inputs,
        )

    writer = _writer.Writer(path, batch_size=100, flush_interval=0, durable=False, timeout=5, on_commit=None)
    writer._db = _writer.connect(path, timeout=5, durable=False)
    try:
        writer._write(list(messages[::2]))  # stored first: their ids are not the ones the next batch assumes
        writer._ids.clear()  # as in a new store
        writer._write([*messages[::-1], record(1, messages)])
        writer._write(
            [record(2, tuple(TextMessage(content=m.content) for m in messages)), record(3, messages)]
        )
    finally:
        writer._db.close()
    with StoreReader(path) as reader:
        calls = reader.calls(run_id="run")
        assert len(calls) == 3
        for call in calls:
            assert [m.content for m in reader.inputs(call)] == [m.content for m in messages]
            assert [m.content for m in reader.replies(call)] == [m.content for m in messages]
