"""Exactly-once persistence in bounded memory: the recent-key cache of a long-lived context.

A context whose only persistence handlers belong to stores that keep each message once by themselves
(``deduplicates_by_hash_key``, e.g. ``SQLiteStore``) remembers a bounded number of recent hash keys; plain
handlers keep the exact set (each distinct message once) unless a bound is asked for.
"""

from __future__ import annotations

import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from unittest import mock

import anyio
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from miniagents import InteractionContext, Message, MiniAgents, TextMessage, _dedup, miniagent
from miniagents._frozen import freeze
from miniagents.persistence import SQLiteStore, StoreReader, _codec, _writer

pytestmark = pytest.mark.anyio


@miniagent
async def echo_copies(ctx: InteractionContext) -> None:
    """Replies with a separately built copy of each input (same hash key, another object), and for every
    input whose number is a multiple of 3 a holder with another copy nested in it."""
    async for message in ctx.messages:
        ctx.reply(TextMessage(content=message.content))
        number = int(message.content[1:])
        if number % 3 == 0:
            ctx.reply(Message(content=f"holder {number}", inner=TextMessage(content=message.content)))


def _inputs(numbers: list[int]) -> list[Message]:
    return [TextMessage(content=f"m{number}") for number in numbers]


def _expected_keys(calls: list[list[int]]) -> set[str]:
    """The hash key of every distinct message the calls of ``echo_copies`` produce (nested ones included)."""
    keys: set[str] = set()
    for number in {n for call in calls for n in call}:
        keys.add(TextMessage(content=f"m{number}").hash_key)
        if number % 3 == 0:
            keys.add(Message(content=f"holder {number}", inner=TextMessage(content=f"m{number}")).hash_key)
    return keys


def _stored_key_counts(path: str) -> dict[str, int]:
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT hash_key, count(*) FROM messages GROUP BY hash_key").fetchall())
    finally:
        db.close()


@contextmanager
def _temp_db() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        yield str(Path(tmp) / "run.db")


call_lists = st.lists(st.lists(st.integers(0, 11), max_size=4), min_size=1, max_size=16)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    calls=call_lists,
    cache_size=st.integers(1, 6),
    batch_size=st.integers(1, 5),
    id_cache_limit=st.integers(1, 8),
)
async def test_with_a_small_cache_the_store_ends_with_every_distinct_message_once_and_calls_read_back(
    calls: list[list[int]], cache_size: int, batch_size: int, id_cache_limit: int
) -> None:
    # The writer's id cache is made tiny too, so call records are written after the ids they need were dropped.
    with _temp_db() as path, mock.patch.object(_writer, "_ID_CACHE_LIMIT", id_cache_limit):
        store = SQLiteStore(path, batch_size=batch_size, flush_interval=0.0)
        replies: list[list[str]] = []
        async with MiniAgents(store=store, dedup_cache_size=cache_size) as context:
            for numbers in calls:
                replies.append([m.hash_key for m in await echo_copies.inquire(_inputs(numbers))])
                stats = context.statistics()
                assert stats.dedup_cache_size == cache_size
                assert stats.dedup_keys <= cache_size
        counts = _stored_key_counts(path)
        assert counts == dict.fromkeys(_expected_keys(calls), 1)
        with StoreReader(path) as reader:
            stored_calls = reader.calls()
            assert len(stored_calls) == len(calls)
            for stored, numbers, reply_keys in zip(stored_calls, calls, replies, strict=True):
                assert [m.content for m in reader.inputs(stored.key)] == [f"m{n}" for n in numbers]
                assert [m.hash_key for m in reader.replies(stored.key)] == reply_keys


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=call_lists, would_be_cache_size=st.integers(1, 6))
async def test_a_plain_handler_next_to_the_store_still_sees_each_distinct_message_exactly_once(
    calls: list[list[int]], would_be_cache_size: int
) -> None:
    # Even with a tiny default bound, a plain handler makes the context keep every key.
    seen: list[str] = []
    with _temp_db() as path, mock.patch.object(_dedup, "DEFAULT_DEDUP_CACHE_SIZE", would_be_cache_size):
        async with MiniAgents(
            store=SQLiteStore(path), on_persist_message=lambda m: seen.append(m.hash_key)
        ) as c:
            assert c.statistics().dedup_cache_size is None
            for numbers in calls:
                await echo_copies.inquire(_inputs(numbers))
        assert sorted(seen) == sorted(_expected_keys(calls))
        assert _stored_key_counts(path) == dict.fromkeys(seen, 1)


@settings(max_examples=60, deadline=None)
@given(numbers=st.lists(st.integers(0, 15), max_size=120), cache_size=st.integers(1, 10))
async def test_a_bounded_cache_never_exceeds_its_size_and_forgets_a_key_only_after_half_of_it_was_refilled(
    numbers: list[int], cache_size: int
) -> None:
    # An explicit bound also applies to plain handlers: they may see a message again, but only once its key
    # had at least cache_size // 2 messages after it, and never miss one.
    handed: list[str] = []
    queued_at: list[int] = []
    async with MiniAgents(
        on_persist_message=lambda m: handed.append(m.content), dedup_cache_size=cache_size
    ) as c:
        for position, number in enumerate(numbers):
            pending = c.statistics().pending_persistence
            c._persist(TextMessage(content=f"m{number}"))  # a new object each time: only the cache can tell
            stats = c.statistics()
            assert stats.dedup_keys <= cache_size
            if stats.pending_persistence > pending:
                queued_at.append(position)
    assert handed == [f"m{numbers[position]}" for position in queued_at]
    assert set(handed) == {f"m{number}" for number in numbers}
    last: dict[int, int] = {}
    queued = set(queued_at)
    for position, number in enumerate(numbers):
        if number in last and position in queued:
            assert position - last[number] > cache_size // 2
        last[number] = position


async def test_a_sqlite_store_context_is_bounded_by_default_and_a_plain_handler_keeps_every_key() -> None:
    with _temp_db() as path:
        store = SQLiteStore(path)
        assert store.deduplicates_by_hash_key is True
        assert MiniAgents(store=store).statistics().dedup_cache_size == _dedup.DEFAULT_DEDUP_CACHE_SIZE
        # The store's methods passed as handlers count as the store.
        handlers = MiniAgents(
            on_persist_message=store.on_persist_message, on_call_finished=store.on_call_finished
        )
        assert handlers.statistics().dedup_cache_size == _dedup.DEFAULT_DEDUP_CACHE_SIZE
        assert MiniAgents(store=store, on_persist_message=print).statistics().dedup_cache_size is None
        assert MiniAgents(on_persist_message=print).statistics().dedup_cache_size is None
        assert MiniAgents(on_persist_message=print, dedup_cache_size=10).statistics().dedup_cache_size == 10


class _ListStore:
    """A store that keeps every message it is handed, duplicates included, and may declare deduplication."""

    def __init__(self, *, declares: bool | None) -> None:
        self.messages: list[Message] = []
        if declares is not None:
            self.deduplicates_by_hash_key = declares

    def on_persist_messages(self, messages: list[Message]) -> None:
        self.messages.extend(messages)

    def on_persist_message(self, message: Message) -> None:
        self.messages.append(message)


@pytest.mark.parametrize("declares", [None, False])
async def test_a_store_that_does_not_declare_deduplication_gets_each_message_exactly_once(
    declares: bool | None,
) -> None:
    store = _ListStore(declares=declares)
    with mock.patch.object(_dedup, "DEFAULT_DEDUP_CACHE_SIZE", 2):
        async with MiniAgents(store=store) as context:
            assert context.statistics().dedup_cache_size is None
            for _ in range(3):
                for number in range(10):
                    context._persist(TextMessage(content=f"m{number}"))
            assert context.statistics().dedup_keys == 10
    assert [m.content for m in store.messages] == [f"m{number}" for number in range(10)]


async def test_a_declaring_store_may_get_a_message_again_once_its_key_was_dropped() -> None:
    store = _ListStore(declares=True)
    async with MiniAgents(store=store, dedup_cache_size=2) as context:
        for content in ["a", "a", "b", "c", "a"]:
            context._persist(TextMessage(content=content))
    # size 2: one key per generation; "a" is remembered across its immediate repeat, dropped after "b", "c".
    assert [m.content for m in store.messages] == ["a", "b", "c", "a"]


async def test_adding_a_plain_handler_to_a_bounded_context_keeps_the_keys_of_queued_messages() -> None:
    store = _ListStore(declares=True)
    with mock.patch.object(_dedup, "DEFAULT_DEDUP_CACHE_SIZE", 2):
        context = MiniAgents(store=store)
    assert context.statistics().dedup_cache_size == 2
    async with context:
        for content in ["a", "b", "c"]:  # "a" is queued (not handed over yet) and its key dropped already
            context._persist(TextMessage(content=content))
        late: list[str] = []
        context.on_persist_message(lambda m: late.append(m.content))
        assert context.statistics().dedup_cache_size is None
        for content in ["a", "b", "c", "d"]:
            context._persist(TextMessage(content=content))
    assert late == ["a", "b", "c", "d"]
    assert [m.content for m in store.messages] == ["a", "b", "c", "d"]


async def test_each_activation_of_a_bounded_context_hands_every_distinct_message_over_again() -> None:
    handed: list[str] = []
    context = MiniAgents(on_persist_message=lambda m: handed.append(m.content), dedup_cache_size=6)
    for _ in range(2):
        async with context:
            for content in ["a", "b", "c", "a", "b", "c"]:
                context._persist(TextMessage(content=content))
            assert context.statistics().dedup_keys <= 6
    assert handed == ["a", "b", "c", "a", "b", "c"]


@pytest.mark.parametrize(
    ("size", "error", "text"),
    [
        (0, ValueError, "dedup_cache_size= must be at least 1, got 0"),
        (-5, ValueError, "dedup_cache_size= must be at least 1, got -5"),
        ("100", TypeError, "dedup_cache_size= needs an int (or None), got str"),
        (True, TypeError, "dedup_cache_size= needs an int (or None), got bool"),
    ],
)
def test_an_invalid_cache_size_is_refused_naming_the_option(
    size: object, error: type[Exception], text: str
) -> None:
    with pytest.raises(error) as raised:
        MiniAgents(dedup_cache_size=size)  # type: ignore[arg-type]
    assert str(raised.value) == text


async def test_the_writer_id_cache_stays_within_its_limit_or_one_commit() -> None:
    sizes: list[int] = []
    with _temp_db() as path, mock.patch.object(_writer, "_ID_CACHE_LIMIT", 50):
        holder: list[SQLiteStore] = []

        def on_commit(keys: object) -> None:  # runs in the writer thread, after the id cache was updated
            writer = holder[0]._writer
            assert writer is not None
            sizes.append(len(writer._ids))

        store = SQLiteStore(path, batch_size=20, flush_interval=0.0, on_commit=on_commit)
        holder.append(store)
        async with MiniAgents(store=store):
            for start in range(0, 400, 10):
                await echo_copies.inquire(_inputs(list(range(start, start + 10))))
        assert store.statistics().stored_messages == len(_expected_keys([list(range(400))]))
    assert sizes and max(sizes) <= 50 + 20 * 2  # the limit, or one commit's messages (inputs and holders)


_kwarg_values = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.tuples(st.integers())
)


@settings(max_examples=200, deadline=None)
@given(kwargs=st.dictionaries(st.text(), _kwarg_values, max_size=4))
@example(kwargs={"n": float("nan"), "i": float("-inf")})
@example(kwargs={"$t": 1})
@example(kwargs={"number": 7, "name": "x", "on": True, "none": None, "ratio": -0.0})
def test_call_kwargs_of_plain_values_are_stored_as_the_general_encoding_stores_them(
    kwargs: dict[str, object],
) -> None:
    # The writer's shortcut for plain kwargs must give the same text as the general path, and round-trip.
    frozen = freeze(kwargs, "kwargs")
    general = _codec._dumps(Message(kwargs=_codec._describe_references(frozen)).to_dict()["kwargs"])
    text = _codec.encode_kwargs(frozen)
    assert text == (general if kwargs else "{}")
    assert _codec.encode_kwargs(_codec.decode_kwargs(text)) == text  # (NaN is not equal to itself)


async def test_a_store_that_falls_behind_makes_handing_over_wait_instead_of_queueing_without_bound() -> None:
    release = threading.Event()

    def stall_the_writer(keys: object) -> None:  # the writer thread commits once, then waits here
        release.wait()

    with _temp_db() as path:
        store = SQLiteStore(path, batch_size=2, flush_interval=0.0, max_queued=4, on_commit=stall_the_writer)
        queue_sizes: list[int] = []

        def hand_over() -> None:  # as the persistence worker does, but in a thread: handing over may block
            for number in range(20):
                store.on_persist_message(TextMessage(content=f"m{number}"))
                assert store._writer is not None
                queue_sizes.append(len(store._writer.queue))

        async with store:
            try:
                with anyio.fail_after(30):  # a guard against hanging, not a timing assertion
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(partial(anyio.to_thread.run_sync, hand_over))
                        while store.statistics().throttled == 0:
                            await anyio.sleep(0.001)
                        assert len(queue_sizes) < 20  # blocked while the writer is stalled
                        release.set()
            finally:
                release.set()
        assert max(queue_sizes) <= 4 + 2  # max_queued, give or take one batch (checked once per batch)
        stats = store.statistics()
        assert stats.throttled >= 1 and stats.stored_messages == 20


def test_max_queued_below_the_batch_size_is_refused() -> None:
    with pytest.raises(ValueError, match=r"max_queued must be at least batch_size \(10\), got 5"):
        SQLiteStore("run.db", batch_size=10, max_queued=5)


async def test_a_handler_registered_after_an_explicit_bound_is_under_that_bound() -> None:
    context = MiniAgents(dedup_cache_size=4)
    handed: list[str] = []
    context.on_persist_message(lambda m: handed.append(m.content))
    async with context:
        for number in range(50):
            context._persist(TextMessage(content=f"m{number}"))
            assert context.statistics().dedup_keys <= 4
    assert handed == [f"m{number}" for number in range(50)]
