"""Schema version 3: the integer key-prefix index, its migration from version 2, and prefix collisions."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miniagents import InteractionContext, Message, MiniAgents, TextMessage, miniagent
from miniagents.persistence import SCHEMA_VERSION, SQLiteStore, StoreReader, _reader, _writer
from miniagents.persistence._codec import encode_message, pack_ids
from miniagents.persistence._schema import key_prefix, migrate

pytestmark = pytest.mark.anyio


@miniagent
async def echo(ctx: InteractionContext) -> None:
    async for message in ctx.messages:
        ctx.reply(f"echo: {message}")
    ctx.reply(Message(content="holder", inner=TextMessage(content="nested")))


def test_key_prefix_is_the_first_60_bits_and_fits_an_sqlite_integer() -> None:
    assert key_prefix("0" * 64) == 0
    assert key_prefix("f" * 64) == 2**60 - 1 < 2**63
    key = TextMessage(content="x").hash_key
    assert key_prefix(key) == int.from_bytes(bytes.fromhex(key[:16]), "big") >> 4
    with pytest.raises(ValueError, match="invalid literal"):
        key_prefix("not a key")


def _write_version_2(path: str) -> tuple[list[Message], Message]:
    """A file as the version 2 writer left it: messages (one holding another), a call, a run."""
    nested = TextMessage(content="nested")
    holder = Message(content="holder", inner=nested)
    plain = TextMessage(content="old")
    with sqlite3.connect(path, isolation_level=None) as db:
        assert migrate(db, 2) == 2
        now = time.time()
        for message_id, message in enumerate([plain, nested, holder], start=1):
            cls, content, fields, refs = encode_message(message)
            db.execute(
                "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)",
                (message_id, message.hash_key, cls, content, fields, len(refs), now),
            )
        db.execute("INSERT INTO message_refs VALUES (3, 0, 2)")
        db.execute(
            "INSERT INTO calls (run_id, call_id, parent_call_id, agent_alias, kwargs, started_at, finished_at,"
            " outcome) VALUES ('old-run', 1, NULL, 'echo', '{}', ?, ?, 'completed')",
            (now, now),
        )
        db.execute("INSERT INTO call_messages VALUES (1, 'input', 1, ?)", (pack_ids([1]),))
        db.execute("INSERT INTO call_messages VALUES (1, 'reply', 2, ?)", (pack_ids([1, 3]),))
        db.execute("INSERT INTO runs VALUES ('old-run', ?, ?)", (now, now))
    return [plain, nested, holder], holder


async def test_a_version_2_file_is_read_as_it_is_and_migrated_by_the_first_writer(tmp_path: Path) -> None:
    path = str(tmp_path / "v2.db")
    old, holder = _write_version_2(path)
    with StoreReader(path) as reader:  # readers never migrate: the old text index is used
        assert reader.get(holder.hash_key) == holder
        assert reader.replies(("old-run", 1)) == [old[0], holder]

    async with SQLiteStore(path) as store, MiniAgents(store=store):
        await echo.inquire(["old", "new"])  # "old", "nested" and "holder" are stored already

    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        columns = [row[1] for row in db.execute("PRAGMA table_info(messages)")]
        assert columns[:3] == ["id", "key_prefix", "hash_key"]
        rows = db.execute("SELECT id, key_prefix, hash_key FROM messages ORDER BY id").fetchall()
        assert [row[0] for row in rows[:3]] == [1, 2, 3]  # ids kept: refs and calls stay valid
        assert all(prefix == key_prefix(key) for _, prefix, key in rows)
        assert len({key for _, _, key in rows}) == len(rows)  # nothing stored twice
    with StoreReader(path) as reader:
        assert reader.get(holder.hash_key) == holder
        assert reader.replies(("old-run", 1)) == [old[0], holder]
        assert reader.hash_keys() == {m.hash_key for m in old} | {
            TextMessage(content=c).hash_key for c in ["new", "echo: old", "echo: new"]
        }


async def test_messages_whose_key_prefix_is_taken_are_stored_once_and_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real 64-bit prefix collisions are too rare to meet in a test: make every key share one prefix.
    monkeypatch.setattr(_writer, "key_prefix", lambda key: 7)
    monkeypatch.setattr(_reader, "key_prefix", lambda key: 7)
    path = str(tmp_path / "collide.db")
    for _ in range(2):  # the second run stores nothing new: found by the full key
        async with SQLiteStore(path, batch_size=2) as store, MiniAgents(store=store):
            replies = await echo.inquire(["a", "b", "a"])
    assert store.statistics().stored_messages == 0
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT key_prefix, hash_key FROM messages").fetchall()
        assert sorted(prefix for prefix, _ in rows if prefix is not None) == [7]  # one row holds the prefix
        assert len({key for _, key in rows}) == len(rows) == 6  # a, b, two distinct echoes, nested, holder
    with StoreReader(path) as reader:
        for message in replies:
            assert reader.get(message.hash_key) == message
        (call,) = [c for c in reader.calls() if c.run_id == reader.runs()[0].run_id]
        assert reader.replies(call) == list(replies)
        assert reader.get("not a key") is None


@pytest.mark.skipif(sys.version_info < (3, 11), reason="sqlite3 Connection.setlimit is Python 3.11+")
@settings(max_examples=40, deadline=None)
@given(count=st.integers(0, 9000), width=st.integers(1, 8), limit=st.sampled_from([8, 999, 32766]))
def test_multi_row_inserts_store_every_row_within_the_variable_limit(
    count: int, width: int, limit: int
) -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute(f"CREATE TABLE t ({', '.join(f'c{i}' for i in range(width))})")
    db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)  # a statement over the limit fails
    rows = [tuple(range(n * width, (n + 1) * width)) for n in range(count)]
    _writer.insert_rows(db, "INSERT INTO t", rows, _writer.max_variables(db))
    assert db.execute("SELECT * FROM t ORDER BY rowid").fetchall() == rows


@pytest.mark.skipif(sys.version_info < (3, 11), reason="sqlite3 Connection.setlimit is Python 3.11+")
@settings(max_examples=40, deadline=None)
@given(
    count=st.integers(0, 9000),
    width=st.integers(1, 6),
    constants=st.lists(st.text(max_size=3), min_size=1, max_size=2),
    limit=st.sampled_from([8, 999, 32766]),
)
def test_multi_row_inserts_bind_constants_once_per_statement_into_every_row(
    count: int, width: int, constants: list[str], limit: int
) -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    columns = [f"c{i}" for i in range(width + len(constants))]
    db.execute(f"CREATE TABLE t ({', '.join(columns)})")
    db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)
    values = list(range(count * width))
    _writer.insert_flat(db, f"INSERT INTO t ({', '.join(columns)})", width, values, limit, constants)
    expected = [(*values[n * width : (n + 1) * width], *constants) for n in range(count)]
    assert db.execute("SELECT * FROM t ORDER BY rowid").fetchall() == expected
